"""Optimizer registry, problems, runner and the experiment entry point."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from flowrepro.io import TIDY_COLUMNS, read_table
from flowrepro.optim.experiment import run_optimizer_experiment
from flowrepro.optim.registry import OptimizerSpec, get_optimizer
from flowrepro.optim.runner import fit_exponent, performance_profile, run_optimizer
from flowrepro.registry import OPTIMIZERS

EXPECTED = ["adabelief", "adahessian", "adam", "ademamix", "adamw", "adan", "amsgrad", "diffgrad",
            "exadam", "grams", "gravity", "lion", "sgd"]
#: a safe lr per optimizer on the quadratic (curvatures 1..10)
QUAD_LR = {"sgd": 0.02, "lion": 0.01, "adahessian": 0.1, "gravity": 1.0}


def _summary(rows: list[dict]) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in rows if r["nfe"] == ""}


def _first_curve(rows: list[dict], metric: str) -> float:
    return next(r["value"] for r in rows if r["metric"] == f"curve_{metric}" and r["nfe"] == 0)


def test_registry_has_every_optimizer():
    assert set(EXPECTED) <= set(OPTIMIZERS.names())
    for name in EXPECTED:
        spec = get_optimizer(name)
        assert isinstance(spec, OptimizerSpec) and spec.name == name
        assert spec.needs_create_graph == (name == "adahessian")


@pytest.mark.parametrize("name", EXPECTED)
def test_every_optimizer_lowers_a_quadratic(name):
    rows = run_optimizer("quadratic", name, QUAD_LR.get(name, 0.05), seed=0, steps=60, log_every=60)
    start, end = _first_curve(rows, "loss"), _summary(rows)["loss"]
    assert math.isfinite(end) and end < 0.5 * start, (name, start, end)


def test_hutchinson_diagonal_matches_true_diagonal():
    """E_z[z * (H z)] = diag(H) for Rademacher z: AdaHessian's estimate on f = x^T A x / 2."""
    import torch

    torch.manual_seed(0)
    m = torch.randn(5, 5)
    a = m @ m.T + torch.eye(5)  # symmetric, dense off-diagonal: the estimate is noisy per sample
    x = torch.randn(5, requires_grad=True)
    opt = get_optimizer("adahessian").build([x], 0.1)
    (0.5 * x @ a @ x).backward(create_graph=True)
    opt.zero_hessian(opt.param_groups, opt.state)
    n = 4000
    opt.compute_hutchinson_hessian(opt.param_groups, opt.state, num_samples=n, distribution="rademacher")
    estimate = opt.state[x]["hessian"]
    off = (a - torch.diag(torch.diag(a))).pow(2).sum(1).sqrt()  # per-coordinate std of one sample
    assert torch.all((estimate - torch.diag(a)).abs() < 5 * off / math.sqrt(n) + 1e-6)
    x.grad = None


def test_performance_profile_hand_computed():
    inf = math.inf
    table = pd.DataFrame({
        "dataset": ["p1", "p1", "p1", "p2", "p2", "p2"],
        "method": ["A", "B", "C", "A", "B", "C"],
        "value": [1.0, 2.0, inf, 4.0, 2.0, 8.0],
    })
    # ratios: p1 A=1 B=2 C=inf ; p2 A=2 B=1 C=4
    profile = performance_profile(table, [1, 2, 4])
    got = {(r.method, r.tau): r.fraction for r in profile.itertuples()}
    expected = {("A", 1): 0.5, ("A", 2): 1.0, ("A", 4): 1.0,
                ("B", 1): 0.5, ("B", 2): 1.0, ("B", 4): 1.0,
                ("C", 1): 0.0, ("C", 2): 0.0, ("C", 4): 0.5}
    assert got == expected


def test_fit_exponent_recovers_power_law():
    batches = [16, 32, 64, 128]
    assert fit_exponent(batches, [0.01 * b for b in batches]) == pytest.approx(1.0)
    assert fit_exponent(batches, [0.01 * b ** 0.5 for b in batches]) == pytest.approx(0.5)


def test_amsgrad_counterexample():
    """Reddi et al.: Adam drifts to x = +1, AMSGrad to the optimum x = -1."""
    kw = dict(seed=0, steps=10100, log_every=10100, optimizer_kwargs={"betas": (0.9, 0.99)}, curves=False)
    adam = _summary(run_optimizer("amsgrad_online", "adam", 0.5, **kw))
    ams = _summary(run_optimizer("amsgrad_online", "amsgrad", 0.5, **kw))
    assert adam["final_x"] > 0.9
    assert ams["final_x"] < -0.9
    assert ams["avg_regret"] < adam["avg_regret"]


def test_projection_and_lr_decay_keep_x_in_box():
    rows = run_optimizer("amsgrad_online", "sgd", 10.0, seed=0, steps=300, log_every=1)
    xs = [r["value"] for r in rows if r["metric"] == "curve_x"]
    assert all(-1.0 <= x <= 1.0 for x in xs)


def test_experiment_writes_tidy_table(tmp_path):
    experiment = {
        "id": "tiny_optim", "kind": "optimizer",
        "problems": [
            {"name": "diffgrad_f1", "steps": 30, "deterministic": True},
            {"name": "quadratic", "steps": 30, "log_every": 5,
             "target": {"metric": "loss", "value": 1.0, "mode": "min"}},
        ],
        "optimizers": ["adam", {"name": "sgd", "lr_grid": [0.01, 0.05]}],
        "lr_grid": [0.01, 0.1],
        "optimizer_kwargs": {"adam": {"betas": [0.9, 0.99]}},
        "performance_profile": {"metric": "steps_to_target", "tau": [1, 2]},
        "lr_batch_scaling": {"problem": "digits_linear", "optimizers": ["sgd"], "batch_sizes": [16, 64],
                             "lr_grid": [0.5, 4.0, 32.0], "steps": 3},
    }
    out = tmp_path / "metrics.csv"
    run_optimizer_experiment(experiment, {"seeds": [0, 1], "name": "tiny"}, str(out))
    table = read_table(out)
    assert list(table.columns) == TIDY_COLUMNS
    metrics = set(table.metric)
    assert {"final_x", "final_gap", "best_lr", "steps_to_target", "seconds_to_target", "loss",
            "max_stable_lr", "lr_exponent", "perf_profile_tau=1", "curve_loss"} <= metrics
    assert set(table.experiment) == {"tiny_optim"} and set(table.scale) == {"tiny"}
    # deterministic problem ran one seed; the quadratic ran both
    assert set(table[table.dataset == "diffgrad_f1"].seed) == {0}
    assert set(table[(table.dataset == "quadratic") & (table.metric == "loss")].seed) == {0, 1}
    # one best_lr per (problem, optimizer, seed), drawn from that optimizer's grid
    best = table[(table.metric == "best_lr") & (table.method == "sgd")]
    assert set(best.value) <= {0.01, 0.05}
