"""claims: check an experiment's claims against its metrics table -> claims.csv.

Each claim gets ``pass``, ``fail``, ``inconclusive`` or ``not-run`` with its mean margin, the
one-sided half-width and how many seeds agree (:mod:`flowrepro.verdicts`). A claim on an optimizer
whose learning-rate sweep chose the smallest or largest value of its grid is ``inconclusive``:
the grid's bound, not the optimizer, decided it.
"""
from __future__ import annotations

import pandas as pd

from flowrepro import io
from flowrepro.claims import check_claim, parse_claim, refs_of
from flowrepro.config import load_experiment, load_scale, roles

CLAIM_COLUMNS = ["claim_id", "status", "observed", "threshold", "margin", "interval", "seeds_agree", "detail", "text", "expr"]


def sweeps_on_grid_edge(expr: str, table, dataset_roles: dict) -> list[str]:
    """'<optimizer> on <problem>' for each optimizer a claim reads whose best lr sits on its grid's edge."""
    edges = table[(table["metric"] == "best_lr_at_grid_edge") & (table["value"].astype(float) == 1.0)]
    if edges.empty:
        return []
    found = []
    for ref in refs_of(parse_claim(expr)):
        filters = dict(ref.filters)
        dataset = dataset_roles.get(filters.get("dataset"), filters.get("dataset"))
        rows = edges[(edges["method"] == filters.get("method")) & ((dataset is None) | (edges["dataset"] == dataset))]
        found += [f"{m} on {d}" for m, d in zip(rows["method"], rows["dataset"]) if f"{m} on {d}" not in found]
    return found


def run(experiment_file: str, metrics_file: str, out: str, scale_file: str | None = None) -> None:
    """``scale_file`` maps the claims' dataset roles (``dataset=images``) to the scale's datasets."""
    experiment = load_experiment(experiment_file)
    dataset_roles = roles(load_scale(scale_file)) if scale_file else {}
    table = io.read_table(metrics_file)
    rows = []
    for claim in experiment["claims"]:
        try:
            result = check_claim(claim["expr"], table, dataset_roles, seeds_needed=claim.get("seeds"))
        except ValueError as error:  # a malformed or ambiguous claim is a config error: say which
            raise ValueError(f"{experiment_file}: claim {claim['id']!r}: {error}") from error
        edges = sweeps_on_grid_edge(claim["expr"], table, dataset_roles) if result["status"] != "not-run" else []
        if edges:
            result["status"] = "inconclusive"
            result["detail"] += f" | the lr sweep's best value sits on its grid's edge for {', '.join(edges)}: extend the grid"
        rows.append({"claim_id": claim["id"], **result, "text": claim["text"], "expr": claim["expr"]})
        print(f"claims: {claim['id']}: {result['status']}  {result['detail']}")
    io.write_text(out, pd.DataFrame(rows, columns=CLAIM_COLUMNS).to_csv(index=False))
