"""Verdicts: per-seed paired margins, a one-sided t interval, inconclusive inside seed noise."""
import math

import pandas as pd
import pytest

from flowrepro.claims import check_claim
from flowrepro.verdicts import combine, decide, margins


def test_interval_decides_pass_fail_or_inconclusive():
    # mean 2, sd 1, n 3: half-width t_{0.95,2} / sqrt(3) = 2.920 / 1.732 = 1.686
    verdict = decide("<", [1.0, 2.0, 3.0])
    assert verdict.status == "pass" and verdict.half_width == pytest.approx(2.919986 / math.sqrt(3), rel=1e-5)
    assert decide("<", [0.5, 2.0, 3.5]).status == "inconclusive"  # sd 1.5: the bound reaches below 0
    assert decide("<", [-1.0, -2.0, -3.0]).status == "fail"
    assert decide("<", [1.0, -0.5, 0.2]).agree == 2


def test_one_value_and_ties_follow_the_operator():
    assert decide("<", [0.1]).status == "pass" and decide("<", [-0.1]).status == "fail"
    assert decide("<=", [0.0, 0.0, 0.0]).status == "pass" and decide("<", [0.0, 0.0, 0.0]).status == "fail"
    assert margins(">", [3.0], [1.0]) == [2.0] and margins("<", [3.0], [1.0]) == [-2.0]
    assert combine(["pass", "inconclusive"]) == "inconclusive" and combine(["pass", "fail"]) == "fail"


def _table(rows):
    base = {"experiment": "x", "optimizer": "", "sampler": "euler", "schedule": "", "nfe": 1, "scale": "tiny",
            "dataset": "moons"}
    return pd.DataFrame([{**base, "method": m, "seed": s, "metric": "w2", "value": v} for m, s, v in rows])


def test_seeds_are_paired():
    # the seeds differ a lot, b is a little better than a on every seed: paired, that decides
    table = _table([("a", s, v) for s, v in enumerate([1.0, 5.0, 9.0])] +
                   [("b", s, v - 0.1 + 0.01 * s) for s, v in enumerate([1.0, 5.0, 9.0])])
    result = check_claim("w2[method=b] < w2[method=a]", table)
    assert result["status"] == "pass" and result["seeds_agree"] == "3/3"
    assert float(result["margin"]) == pytest.approx(0.09)


def test_noise_inside_the_interval_is_inconclusive_and_a_stated_seed_count_is_enforced():
    table = _table([("a", 0, 1.0), ("a", 1, 2.0), ("a", 2, 3.0), ("b", 0, 0.5), ("b", 1, 2.6), ("b", 2, 2.8)])
    result = check_claim("w2[method=b] < w2[method=a]", table)
    assert result["status"] == "inconclusive" and result["seeds_agree"] == "2/3"
    clear = _table([("a", s, 1.0 + s) for s in range(3)] + [("b", s, 0.5 + s) for s in range(3)])
    assert check_claim("w2[method=b] < w2[method=a]", clear)["status"] == "pass"
    needs = check_claim("w2[method=b] < w2[method=a]", clear, seeds_needed=5)
    assert needs["status"] == "inconclusive" and "needs 5 seeds" in needs["detail"]


def test_a_single_row_stands_for_every_seed():
    table = _table([("a", s, 1.0 + 0.01 * s) for s in range(3)] + [("floor", "", 2.0)])
    result = check_claim("w2[method=a] < w2[method=floor]", table)
    assert result["status"] == "pass" and result["seeds_agree"] == "3/3"
    deterministic = _table([("a", "", 1.0), ("b", "", 1.2)])
    assert check_claim("w2[method=a] < w2[method=b]", deterministic)["seeds_agree"] == "1/1"


def test_a_sweep_on_its_grid_edge_makes_the_claim_inconclusive(tmp_path):
    from flowrepro import io
    from flowrepro.stages import claims

    rows = [{"experiment": "opt", "dataset": "digits_mlp", "method": m, "optimizer": "", "sampler": "", "schedule": "",
             "nfe": "", "seed": s, "scale": "tiny", "metric": "test_accuracy", "value": v, "wall_s": 0.0}
            for m, base in (("adam", 0.90), ("lion", 0.95)) for s, v in enumerate([base, base + 0.001, base + 0.002])]
    rows += [{**rows[0], "method": m, "seed": "", "metric": "best_lr_at_grid_edge", "value": edge}
             for m, edge in (("adam", 1.0), ("lion", 0.0))]
    io.write_table(tmp_path / "metrics.csv", rows)
    experiment = tmp_path / "opt.yaml"
    experiment.write_text("id: opt\ntitle: t\nsource: s\nkind: optimizer\nclaims:\n"
                          "  - {id: c, text: t, expr: 'test_accuracy[method=lion, dataset=digits_mlp] > "
                          "test_accuracy[method=adam, dataset=digits_mlp]'}\n")
    claims.run(str(experiment), str(tmp_path / "metrics.csv"), str(tmp_path / "claims.csv"))
    result = pd.read_csv(tmp_path / "claims.csv").iloc[0]
    assert result["status"] == "inconclusive" and "grid's edge for adam on digits_mlp" in result["detail"]
