"""claims: check an experiment's claims against its metrics table -> claims.csv."""
from __future__ import annotations

import pandas as pd

from flowrepro import io
from flowrepro.claims import check_claim
from flowrepro.config import load_experiment, load_scale, roles

CLAIM_COLUMNS = ["claim_id", "status", "observed", "threshold", "detail", "text", "expr"]


def run(experiment_file: str, metrics_file: str, out: str, scale_file: str | None = None) -> None:
    """``scale_file`` maps the claims' dataset roles (``dataset=images``) to the scale's datasets."""
    experiment = load_experiment(experiment_file)
    dataset_roles = roles(load_scale(scale_file)) if scale_file else {}
    table = io.read_table(metrics_file)
    rows = []
    for claim in experiment["claims"]:
        try:
            result = check_claim(claim["expr"], table, dataset_roles)
        except ValueError as error:  # a malformed or ambiguous claim is a config error: say which
            raise ValueError(f"{experiment_file}: claim {claim['id']!r}: {error}") from error
        rows.append({"claim_id": claim["id"], **result, "text": claim["text"], "expr": claim["expr"]})
        print(f"claims: {claim['id']}: {result['status']}  {result['detail']}")
    io.write_text(out, pd.DataFrame(rows, columns=CLAIM_COLUMNS).to_csv(index=False))
