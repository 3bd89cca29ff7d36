"""report: one page over every experiment -> results/report.md and results/report.html.

Per experiment: what was run (scale, seeds, wall time), the claims with pass/fail and the
numbers that decided them, the paper's own numbers against ours (:mod:`flowrepro.paper_numbers`:
reproduced / not reproduced at a matching scale, not comparable elsewhere), a metrics table
(mean ± std over seeds), the figures, and the provenance (config hash, git commit, library
versions, device, FID features) read from ``provenance.json`` beside the metrics. Both pages open
with an overview: each paper's claim counts and its paper numbers' verdicts, linked to its section,
then the samplers on each pretrained network in one table (quality against counted NFE on one model:
the only fair ordering of samplers), or why the pretrained networks did not run at this scale.
Figures are linked relative to the report, so the results folder can be moved as a whole.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from flowrepro import io, paper_numbers, provenance
from flowrepro.config import load_experiment, load_scale, pretrained_skipped, roles


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of each (dataset, method, optimizer, sampler, schedule, nfe, metric)."""
    table = table.copy()
    # An adaptive solver's NFE differs per seed: group its rows by tolerance, its NFE is a metric row.
    table["nfe"] = table["nfe"].where(~table["schedule"].astype(str).str.startswith("adaptive"), "adaptive")
    keys = ["dataset", "method", "optimizer", "sampler", "schedule", "nfe", "metric"]
    table[keys] = table[keys].fillna("").astype(str)
    grouped = table.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    grouped["value"] = [f"{m:.4g} ± {0 if pd.isna(s) else s:.2g}" for m, s in zip(grouped["mean"], grouped["std"])]
    grouped = grouped.rename(columns={"count": "seeds"})
    keep = [k for k in keys if (grouped[k] != "").any()]
    return grouped[keep + ["value", "seeds"]]


STATUSES = ("pass", "fail", "inconclusive", "not-run")


def recipe_summary(experiment: dict, scale: dict) -> str:
    """The experiment's image-training recipe at this scale and where it departs from the paper ('' if none)."""
    recipe = experiment.get("recipes", {}).get(scale.get("recipes_of", scale["scale"]))
    if not recipe:
        return ""
    values = ", ".join(f"{k} {v}" for k, v in recipe.items() if k not in ("sources", "deviation"))
    deviation = " ".join(recipe.get("deviation", "").split())
    return f"{values}." + (f" Deviation from the paper: {deviation}" if deviation else "")


def _experiment_section(experiment: dict, claims: pd.DataFrame, metrics: pd.DataFrame, figures: list[Path],
                        report_dir: Path, record: dict | None = None, scale: dict | None = None) -> dict:
    counts = claims["status"].value_counts().to_dict()
    comparisons = paper_numbers.compare_all(experiment, metrics, scale["scale"] if scale else "", roles(scale) if scale else {})
    return {
        "id": experiment["id"], "title": experiment["title"], "source": experiment["source"],
        "counts": {s: int(counts.get(s, 0)) for s in STATUSES},
        "summary": ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES),
        "provenance": provenance.describe(record),
        "claims": claims, "metrics": summarise(metrics), "paper_numbers": comparisons,
        "paper_summary": paper_numbers.summary(comparisons),
        "recipe": recipe_summary(experiment, scale) if scale else "",
        "readings": {c["id"]: c["reading"] for c in experiment["claims"] if "reading" in c},
        "wall_s": float(metrics["wall_s"].fillna(0).sum()),
        "figures": [os.path.relpath(f, report_dir) for f in figures if f.suffix == ".png"],
    }


PRETRAINED_NOTE = ("Every sampler of the experiments that list this network, on it alone, with the same noise per seed: "
                   "mean ± std over seeds of {metric}, by counted NFE (network calls per sample). The papers' own "
                   "numbers come from other networks, step grids and FID code; their paper numbers are compared "
                   "in each experiment's section.")


def pretrained_samplers(experiments: list[dict], tables: list[pd.DataFrame], scale: dict) -> list[dict]:
    """Per pretrained network: ``{name, dataset, metric, table}`` (sampler x counted NFE, mean ± std) where it
    ran, or ``{name, skipped}`` naming why it did not run at this scale."""
    out: dict[str, dict] = {}
    for experiment, table in zip(experiments, tables):
        skipped = pretrained_skipped(experiment, scale)
        for name, entry in experiment.get("pretrained", {}).items():
            item = out.setdefault(name, {"name": name, "dataset": entry["dataset"], "rows": [], "experiments": []})
            item["experiments"].append(experiment["id"])
            if name in skipped:
                item["skipped"] = skipped[name]
            item["rows"].append(table[table["method"] == name])  # its straightness rows have no quality metric
    results = []
    for name, item in out.items():
        rows = pd.concat(item["rows"]) if item["rows"] else pd.DataFrame()
        metric = next((m for m in ("fid_inception", "fid_classifier", "w2") if len(rows) and (rows["metric"] == m).any()), None)
        if metric is None:
            results.append({"name": name, "dataset": item["dataset"], "experiments": item["experiments"],
                            "skipped": item.get("skipped", "no sampler rows")})
            continue
        chosen = rows[rows["metric"] == metric].copy()
        chosen["sampler"] = chosen["sampler"] + chosen["schedule"].map(lambda s: "" if s == "uniform" else f" ({s})")
        chosen = chosen.drop_duplicates(["sampler", "nfe", "seed"])  # one sampler listed by two experiments ran twice alike
        stats = chosen.groupby(["sampler", "nfe"], sort=False)["value"].agg(["mean", "std"])
        cells = pd.Series([f"{m:.4g} ± {0 if pd.isna(sd) else sd:.2g}" for m, sd in stats.to_numpy()], index=stats.index)
        grid = cells.unstack("nfe").reindex(columns=sorted(cells.index.get_level_values("nfe").unique(), key=float)).fillna("—")
        grid.columns = [f"NFE {n:g}" if isinstance(n, float) else f"NFE {n}" for n in grid.columns]
        results.append({"name": name, "dataset": item["dataset"], "experiments": item["experiments"], "metric": metric,
                        "table": grid.reset_index()})
    return results


def run(scale_file: str, experiment_files: list[str], claims_files: list[str], metrics_files: list[str],
        figure_files: list[str], out_md: str, out_html: str) -> None:
    scale = load_scale(scale_file)
    report_dir = Path(out_md).parent
    sections, experiments, tables = [], [], []
    for exp_file, claims_file, metrics_file in zip(experiment_files, claims_files, metrics_files):
        experiment, table = load_experiment(exp_file), io.read_table(metrics_file)
        experiments.append(experiment)
        tables.append(table)
        figures = sorted(p for p in _expand(figure_files) if p.parts[-3] == experiment["id"])
        sections.append(_experiment_section(experiment, pd.read_csv(claims_file, keep_default_na=False),
                                            table, figures, report_dir, provenance.read_for(metrics_file), scale))
    header = f"scale `{scale['scale']}`, seeds {scale['seeds']}"
    pretrained = pretrained_samplers(experiments, tables, scale)
    io.write_text(out_md, render_markdown(sections, header, pretrained))
    io.write_text(out_html, render_html(sections, header, pretrained))
    print(f"report: wrote {out_md} and {out_html}")


def _expand(paths: list[str]) -> list[Path]:
    """Figure files, with each directory replaced by the PNG files inside it."""
    out: list[Path] = []
    for path in map(Path, paths):
        out += sorted(path.glob("*.png")) if path.is_dir() else [path]
    return out


def render_markdown(sections: list[dict], header: str, pretrained: list[dict] = ()) -> str:
    lines = ["# flowrepro results", "", header, "", "| experiment | claims | paper's numbers |", "|---|---|---|"]
    lines += [f"| [{s['id']}](#{s['id']}) | {s['summary']} | {s['paper_summary'] or '—'} |" for s in sections]
    lines += ["", "## All claims", "", claims_table(sections)]
    for p in pretrained:
        lines += ["", f"## Samplers on the pretrained {p['name']} ({p['dataset']})", ""]
        if "table" not in p:
            lines.append(f"Not run at this scale ({', '.join(p['experiments'])}): {p['skipped']}")
            continue
        lines += [PRETRAINED_NOTE.format(metric=p["metric"]), "", p["table"].to_markdown(index=False)
                  if _has_tabulate() else p["table"].to_string(index=False)]
    for s in sections:
        lines += ["", f"## {s['id']}", "", f"**{s['title']}**, {s['source']}", "",
                  f"Sampling/measurement wall time recorded: {s['wall_s']:.1f} s.", "", "### Claims", "",
                  "| claim | status | observed | threshold | margin | seeds agree | detail |", "|---|---|---|---|---|---|---|"]
        for _, c in s["claims"].iterrows():
            lines.append(f"| {c['claim_id']}: {c['text']} | **{c['status']}** | {c['observed']} | {c['threshold']} | "
                         f"{_margin(c)} | {c.get('seeds_agree', '')} | {c['detail']} |")
        for claim_id, reading in s["readings"].items():
            lines.append(f"\n*{claim_id}*: {reading}")
        if s["recipe"]:
            lines += ["", f"Training recipe of the image models at this scale: {s['recipe']}"]
        if s["paper_numbers"]:
            lines += ["", "### Paper's numbers", "", PAPER_NUMBERS_NOTE, "", paper_numbers_table(s["paper_numbers"])]
        lines += ["", "### Metrics (mean ± std over seeds)", "", s["metrics"].to_markdown(index=False)
                  if _has_tabulate() else s["metrics"].to_string(index=False), "", "### Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in s["figures"]]
        lines += ["", "### Provenance", ""] + [f"- **{label}**: {value}" for label, value in s["provenance"]]
    return "\n".join(lines) + "\n"


PAPER_NUMBERS_NOTE = ("Theirs against ours (mean ± std over seeds of the rows the metric selects) at the scale the "
                      "number is comparable at: reproduced when |ours - theirs| <= tolerance * |theirs|; at any "
                      "other scale not comparable, ours shown only where such rows exist.")
PAPER_NUMBER_COLUMNS = ("number", "metric", "source", "theirs", "ours (mean ± std, n)", "ratio", "verdict",
                        "tolerance", "note")
#: Row colour of each verdict in the HTML report (the claims' classes).
VERDICT_CLASSES = {"reproduced": "pass", "not reproduced": "fail", "no rows": "not-run",
                   "not comparable": "not-run", "no corresponding row": "not-run"}


def paper_number_cells(c: paper_numbers.Comparison) -> list[str]:
    """One paper number's cells, in the order of ``PAPER_NUMBER_COLUMNS`` ('—' where there is nothing)."""
    number = c.number
    return [number.name, number.metric or "null (no corresponding row)", number.source, f"{number.value:g}",
            "—" if c.ours is None else f"{c.ours:.4g} ± {c.std:.2g} (n={c.n})",
            "—" if c.ratio is None else f"{c.ratio:.3g}", c.label,
            f"±{100 * number.tolerance:.3g}%: {number.tolerance_reason}", number.note]


def paper_numbers_table(comparisons: list[paper_numbers.Comparison]) -> str:
    """The markdown table of an experiment's paper numbers against ours."""
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (a pipe would end the cell)
    lines = ["| " + " | ".join(PAPER_NUMBER_COLUMNS) + " |", "|" + "---|" * len(PAPER_NUMBER_COLUMNS)]
    lines += ["| " + " | ".join(cell(text) for text in paper_number_cells(c)) + " |" for c in comparisons]
    return "\n".join(lines)


def _margin(claim) -> str:
    """'mean ± half-width' of a claim's margin (positive: the claim holds), per comparison."""
    margins, intervals = str(claim.get("margin", "")), str(claim.get("interval", ""))
    if not margins:
        return ""
    return "; ".join(f"{m} {i}".strip() for m, i in zip(margins.split("; "), intervals.split("; ")))


def claims_table(sections: list[dict]) -> str:
    """One markdown table of every claim (the README's results table is this, pasted)."""
    lines = ["| experiment | claim | status | observed | threshold | margin (95% one-sided) | seeds agree |",
             "|---|---|---|---|---|---|---|"]
    for s in sections:
        for _, c in s["claims"].iterrows():
            lines.append(f"| {s['id']} | {c['claim_id']} | {c['status']} | {c['observed']} | {c['threshold']} | "
                         f"{_margin(c)} | {c.get('seeds_agree', '')} |")
    return "\n".join(lines)


def render_html(sections: list[dict], header: str, pretrained: list[dict] = ()) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>flowrepro results</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}.pass{background:#d4f7d4}"
             ".fail{background:#f7d4d4}.inconclusive{background:#f7efc4}.not-run{background:#eee}img{max-width:100%}td.n{text-align:right}"
             "dl.prov{font-size:13px;display:grid;grid-template-columns:max-content auto;gap:2px 12px}"
             "dl.prov dt{font-weight:bold}dl.prov dd{margin:0}</style></head><body>",
             f"<h1>flowrepro results</h1><p>{esc(header)}</p>", _html_index(sections)]
    for p in pretrained:
        parts.append(f"<h2 id='pretrained-{esc(p['name'])}'>Samplers on the pretrained {esc(p['name'])} ({esc(p['dataset'])})</h2>")
        parts.append(f"<p>{esc(PRETRAINED_NOTE.format(metric=p['metric']))}</p>" + p["table"].to_html(index=False, border=0)
                     if "table" in p else f"<p>Not run at this scale ({esc(', '.join(p['experiments']))}): {esc(p['skipped'])}</p>")
    for s in sections:
        parts.append(f"<h2 id='{esc(s['id'])}'>{esc(s['id'])}</h2><p><b>{esc(s['title'])}</b>, {esc(s['source'])}</p>")
        parts.append("<h3>Claims</h3><table><tr><th>claim</th><th>status</th><th>observed</th><th>threshold</th>"
                     "<th>margin (95% one-sided)</th><th>seeds agree</th><th>detail</th></tr>")
        for _, c in s["claims"].iterrows():
            parts.append(f"<tr class='{esc(c['status'])}'><td>{esc(c['claim_id'])}: {esc(c['text'])}</td><td>{esc(c['status'])}</td>"
                         f"<td>{esc(str(c['observed']))}</td><td>{esc(str(c['threshold']))}</td><td>{esc(_margin(c))}</td>"
                         f"<td>{esc(str(c.get('seeds_agree', '')))}</td><td>{esc(c['detail'])}</td></tr>")
        parts.append("</table>")
        parts += [f"<p><i>{esc(k)}</i>: {esc(v)}</p>" for k, v in s["readings"].items()]
        if s["recipe"]:
            parts.append(f"<p class='recipe'>Training recipe of the image models at this scale: {esc(s['recipe'])}</p>")
        if s["paper_numbers"]:
            parts.append(f"<h3>Paper's numbers</h3><p>{esc(PAPER_NUMBERS_NOTE)}</p><table class='paper-numbers'><tr>" +
                         "".join(f"<th>{esc(column)}</th>" for column in PAPER_NUMBER_COLUMNS) + "</tr>")
            parts += [f"<tr class='{VERDICT_CLASSES[c.verdict]}'>" +
                      "".join(f"<td>{esc(text)}</td>" for text in paper_number_cells(c)) + "</tr>" for c in s["paper_numbers"]]
            parts.append("</table>")
        rows = len(s["metrics"])  # long tables (optimizer curves: hundreds of rows) start folded
        parts.append(f"<h3>Metrics (mean ± std over seeds)</h3><details{' open' if rows <= 60 else ''}>"
                     f"<summary>{rows} rows</summary>" + s["metrics"].to_html(index=False, border=0) + "</details>")
        parts += [f"<figure><img src='{esc(f)}' alt='{esc(Path(f).stem)}'><figcaption>{esc(Path(f).stem)}</figcaption></figure>"
                  for f in s["figures"]]
        parts.append("<h3>Provenance</h3><dl class='prov'>" + "".join(
            f"<dt>{esc(label)}</dt><dd>{esc(value)}</dd>" for label, value in s["provenance"]) + "</dl>")
        parts.append("<p><a href='#index'>back to the index</a></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_index(sections: list[dict]) -> str:
    """The table of contents: per paper its pass / fail / not-run counts, linked to its section."""
    esc = html.escape
    total = {s: sum(sec["counts"][s] for sec in sections) for s in STATUSES}
    rows = ["<nav id='index'><h2>Index</h2><p>" + esc(f"{len(sections)} experiments, " +
            ", ".join(f"{total[s]} claims {s}" for s in STATUSES)) + "</p><table><tr><th>experiment</th><th>paper</th>" +
            "".join(f"<th>{s}</th>" for s in STATUSES) + "<th>verdict</th><th>paper's numbers</th></tr>"]
    for sec in sections:
        counts = sec["counts"]
        verdict = ("fail" if counts["fail"] else "not-run" if counts["not-run"] or not sum(counts.values())
                   else "inconclusive" if counts["inconclusive"] else "pass")
        label = {"pass": "all claims pass", "fail": f"{counts['fail']} of {sum(counts.values())} fail",
                 "inconclusive": f"{counts['inconclusive']} of {sum(counts.values())} inside seed noise",
                 "not-run": "not fully run"}[verdict]
        rows.append(f"<tr><td><a href='#{esc(sec['id'])}'>{esc(sec['id'])}</a></td><td>{esc(sec['title'])}</td>" +
                    "".join(f"<td class='n'>{counts[s]}</td>" for s in STATUSES) +
                    f"<td class='{verdict}'>{esc(label)}</td><td>{esc(sec['paper_summary'] or '—')}</td></tr>")
    return "\n".join(rows) + "</table></nav>"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
