"""Paper numbers: the schema of an entry, the verdicts at a matching scale, role resolution, every
shipped entry's metric in the claims grammar, and the report's "Paper's numbers" table."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flowrepro import paper_numbers
from flowrepro.claims import ClaimSyntaxError, parse_expression
from flowrepro.config import ConfigError, load_experiment
from flowrepro.stages import report

REPO = Path(__file__).resolve().parents[1]
PAPER = {"images": "cifar10"}
TINY = {"images": "digits"}


def _entry(**overrides) -> dict:
    entry = {"value": 10.5, "metric": "fid_inception[method=a, dataset=images, sampler=euler, nfe=1]", "scale": "paper",
             "tolerance": 0.1, "tolerance_reason": "no spread published; 10%", "source": "Table 1"}
    return {**entry, **overrides}


def _experiment(numbers: dict) -> dict:
    return {"id": "demo", "title": "Demo", "source": "Someone 2024", "kind": "sampler", "claims": [],
            "paper_numbers": numbers}


def _table(rows: list[tuple]) -> pd.DataFrame:
    """A tidy metrics table from (dataset, method, metric, seed, value) rows, all Euler at one NFE."""
    return pd.DataFrame([{"experiment": "demo", "dataset": d, "method": m, "optimizer": "", "sampler": "euler",
                          "schedule": "uniform", "nfe": 1, "seed": seed, "scale": "paper", "metric": metric,
                          "value": value, "wall_s": 0.0} for d, m, metric, seed, value in rows])


#: Method a on cifar10 at FID 10, 11, 12 over three seeds (mean 11, std 1); method b at 9, 9, 10.
TABLE = _table([("cifar10", "a", "fid_inception", s, v) for s, v in enumerate([10.0, 11.0, 12.0])]
               + [("cifar10", "b", "fid_inception", s, v) for s, v in enumerate([9.0, 9.0, 10.0])])


def _compare(table=TABLE, scale="paper", roles=PAPER, **entry) -> paper_numbers.Comparison:
    (number,) = paper_numbers.entries(_experiment({"n": _entry(**entry)}))
    return paper_numbers.compare(number, table, scale, roles)


# --- schema ---------------------------------------------------------------------------------------

def _load(tmp_path, numbers) -> dict:
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(_experiment(numbers)))
    return load_experiment(path)


def test_schema_accepts_a_full_entry_and_a_null_metric(tmp_path):
    numbers = {"fid": _entry(note="their model"), "speedup": _entry(metric=None, scale=["paper", "small"])}
    assert _load(tmp_path, numbers)["paper_numbers"]["speedup"]["metric"] is None


@pytest.mark.parametrize("missing", ["tolerance_reason", "tolerance", "metric", "scale", "source", "value"])
def test_schema_rejects_an_entry_without_a_required_key(tmp_path, missing):
    entry = _entry()
    del entry[missing]
    with pytest.raises(ConfigError, match=missing):
        _load(tmp_path, {"fid": entry})


def test_schema_rejects_the_old_bare_number_form_and_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="paper_numbers/fid"):
        _load(tmp_path, {"fid": 2.92})
    with pytest.raises(ConfigError, match="reason"):
        _load(tmp_path, {"fid": _entry(reason="typo for tolerance_reason")})
    with pytest.raises(ConfigError, match="tolerance_reason"):
        _load(tmp_path, {"fid": _entry(tolerance_reason="")})


def test_a_metric_outside_the_claims_grammar_is_an_error_naming_the_entry():
    with pytest.raises(ValueError, match="paper_numbers/fid/metric"):
        paper_numbers.entries(_experiment({"fid": _entry(metric="fid_inception[method=a] < 3")}))
    with pytest.raises(ValueError, match="reads no metric row"):
        paper_numbers.entries(_experiment({"fid": _entry(metric="3 * 2")}))
    with pytest.raises(ClaimSyntaxError):
        parse_expression("fid[colour=red]")


# --- verdicts -------------------------------------------------------------------------------------

def test_reproduced_within_the_relative_tolerance_with_mean_spread_and_ratio():
    c = _compare(value=10.5)  # |11 - 10.5| = 0.5 <= 0.1 * 10.5
    assert (c.verdict, c.ours, c.std, c.n) == ("reproduced", 11.0, 1.0, 3)
    assert c.ratio == pytest.approx(11 / 10.5)


def test_not_reproduced_outside_the_tolerance_either_way():
    assert _compare(value=5.0).verdict == "not reproduced"
    assert _compare(value=5.0).ratio == pytest.approx(2.2)
    assert _compare(value=13.0).verdict == "not reproduced"  # ours better than theirs is not theirs reproduced
    assert _compare(value=12.0, tolerance=0.1).verdict == "reproduced"  # |11 - 12| = 1 <= 1.2: the bound is inclusive
    assert _compare(value=12.0, tolerance=0.05).verdict == "not reproduced"


def test_no_rows_at_a_matching_scale_and_not_comparable_elsewhere():
    missing = _compare(metric="fid_inception[method=z, dataset=images]")
    assert (missing.verdict, missing.ours, missing.ratio) == ("no rows", None, None)
    tiny = _compare(scale="tiny", roles=PAPER)  # rows exist, but tiny is not the number's scale
    assert (tiny.verdict, tiny.ours, tiny.ratio, tiny.label) == ("not comparable", 11.0, None, "not comparable (paper scale)")
    assert _compare(scale="smoke").verdict == "not comparable"  # CIFAR-10, but two training steps
    (number,) = paper_numbers.entries(_experiment({"n": _entry(scale=["small", "paper"])}))
    assert paper_numbers.compare(number, TABLE, "small", PAPER).verdict == "reproduced"
    assert paper_numbers.compare(number, TABLE, "small", PAPER).label == "reproduced"


def test_a_null_metric_has_no_corresponding_row_at_every_scale():
    for scale in ("paper", "tiny"):
        c = _compare(metric=None, scale=scale, note="a model we do not have")
        assert (c.verdict, c.ours, c.ratio) == ("no corresponding row", None, None)


def test_dataset_images_resolves_through_the_scale_roles():
    assert _compare(roles=PAPER).ours == 11.0  # images -> cifar10 at paper
    assert _compare(roles=TINY).verdict == "no rows"  # images -> digits: no cifar10 rows picked
    tiny = _compare(scale="tiny", roles=TINY)
    assert (tiny.verdict, tiny.ours) == ("not comparable", None)  # shown as "—"
    assert _compare(metric="fid_inception[method=a, dataset=cifar10, sampler=euler, nfe=1]", roles=TINY).ours == 11.0


def test_arithmetic_over_refs_is_paired_on_the_seed():
    # 100 * (a - b) per seed: 100, 200, 200 -> mean 166.7; a single-row ref stands for every seed
    c = _compare(metric="100 * (fid_inception[method=a, dataset=images] - fid_inception[method=b, dataset=images])",
                 value=170.0)
    assert (c.verdict, c.n) == ("reproduced", 3)
    assert c.ours == pytest.approx(500 / 3) and c.std == pytest.approx(57.735, rel=1e-4)
    one_row = _table([("cifar10", "ref", "fid_inception", 0, 2.0)])
    assert _compare(table=pd.concat([TABLE, one_row]), value=5.5,
                    metric="fid_inception[method=a, dataset=images] / fid_inception[method=ref, dataset=images]").ours == 5.5


def test_an_ambiguous_ref_is_an_error_naming_the_entry():
    experiment = _experiment({"fid": _entry(metric="fid_inception[dataset=images]")})  # methods a and b: two rows a seed
    with pytest.raises(ValueError, match="paper_numbers/fid.*ambiguous"):
        paper_numbers.compare_all(experiment, TABLE, "paper", PAPER)


def test_summary_counts_each_verdict_in_order():
    experiment = _experiment({"ok": _entry(), "off": _entry(value=5.0), "none": _entry(metric=None),
                              "gone": _entry(metric="fid_inception[method=z]")})
    assert paper_numbers.summary(paper_numbers.compare_all(experiment, TABLE, "paper", PAPER)) == \
        "1 reproduced, 1 not reproduced, 1 no rows, 1 no corresponding row"
    assert paper_numbers.summary(paper_numbers.compare_all(experiment, TABLE, "tiny", TINY)) == \
        "3 not comparable (paper scale), 1 no corresponding row"
    assert paper_numbers.summary([]) == ""


# --- the shipped experiments ----------------------------------------------------------------------

SHIPPED = sorted([*REPO.glob("config/experiments/*.yaml"), *REPO.glob("examples/*/*.yaml")], key=str)


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name != "config.yaml"], ids=lambda p: p.stem)
def test_every_shipped_experiment_loads_and_its_metrics_parse(path, registries_restored):
    experiment = load_experiment(path)
    for number in paper_numbers.entries(experiment):  # parses each metric, or raises naming it
        assert number.tolerance_reason and number.source
        if number.metric is None:
            assert number.note, f"{path}: {number.name} has no corresponding row: its note must say why"
        else:
            parse_expression(number.metric)
            assert "dataset=" in number.metric, f"{path}: {number.name}: name the dataset (role) the number is on"


def test_score_sde_numbers_are_the_official_checkpoint_tables():
    numbers = {n.name: n for n in paper_numbers.entries(load_experiment(REPO / "config/experiments/score_sde.yaml"))}
    assert numbers["cifar10_fid_vp_deep_sde"].value == 2.41
    assert numbers["cifar10_fid_vp_deep_pf_ode"].value == 3.08  # VP deep; 2.92 is sub-VP deep
    assert numbers["cifar10_fid_subvp_deep_pf_ode"].value == 2.92 and numbers["cifar10_fid_subvp_deep_pf_ode"].metric is None


# --- the report -----------------------------------------------------------------------------------

def _sections(scale: dict) -> list[dict]:
    experiment = _experiment({"fid_1step": _entry(note="their model and FID code; ours a different model"),
                              "speedup": _entry(value=1.7, metric=None, source="Abstract", note="we measure no speed-up")})
    claims = pd.DataFrame({"claim_id": [], "status": []})
    return [report._experiment_section(experiment, claims, TABLE, [], Path("."), None, scale)]


def test_report_renders_the_paper_numbers_table_at_paper_scale():
    sections = _sections({"scale": "paper", "seeds": [0, 1, 2], "roles": PAPER})
    markdown = report.render_markdown(sections, "scale `paper`")
    assert "| [demo](#demo) | 0 pass, 0 fail, 0 inconclusive, 0 not-run | 1 reproduced, 1 no corresponding row |" in markdown
    assert "### Paper's numbers" in markdown
    header = "| number | metric | source | theirs | ours (mean ± std, n) | ratio | verdict | tolerance | note |"
    assert header in markdown
    assert ("| fid_1step | fid_inception[method=a, dataset=images, sampler=euler, nfe=1] | Table 1 | 10.5 | 11 ± 1 (n=3) "
            "| 1.05 | reproduced | ±10%: no spread published; 10% | their model and FID code; ours a different model |") in markdown
    assert "| speedup | null (no corresponding row) | Abstract | 1.7 | — | — | no corresponding row |" in markdown
    html = report.render_html(sections, "scale paper")
    assert "<table class='paper-numbers'>" in html and "<tr class='pass'><td>fid_1step</td>" in html
    assert "1 reproduced, 1 no corresponding row" in html.split("</nav>")[0]  # the index's summary column


def test_report_at_tiny_scale_says_not_comparable_and_shows_no_number_without_rows():
    markdown = report.render_markdown(_sections({"scale": "tiny", "seeds": [0, 1, 2], "roles": TINY}), "scale `tiny`")
    row = next(line for line in markdown.splitlines() if line.startswith("| fid_1step |"))
    assert "| 10.5 | — | — | not comparable (paper scale) |" in row  # images -> digits: no fid_inception rows
    assert "1 not comparable (paper scale), 1 no corresponding row" in markdown


def test_a_pipe_in_a_note_does_not_break_the_markdown_table():
    experiment = _experiment({"fid": _entry(note="a | b")})
    table = report.paper_numbers_table(paper_numbers.compare_all(experiment, TABLE, "paper", PAPER))
    row = table.splitlines()[-1]
    assert "a \\| b" in row and row.count(" | ") == len(report.PAPER_NUMBER_COLUMNS) - 1
