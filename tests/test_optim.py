"""Optimizer registry, problems, runner and the experiment entry point."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from flowrepro.io import TIDY_COLUMNS, load_npz, read_table
from flowrepro.optim.experiment import run_optimizer_experiment
from flowrepro.optim.registry import OptimizerSpec, get_optimizer
from flowrepro.optim.runner import (fit_exponent, performance_profile, reference_target, run_optimizer,
                                    time_to_target)
from flowrepro.registry import OPTIMIZERS

EXPECTED = ["adabelief", "adahessian", "adam", "ademamix", "adamw", "adan", "amsgrad", "amsgrad_torch", "diffgrad",
            "exadam", "grams", "gravity", "lion", "sgd"]
#: a safe lr per optimizer on the quadratic (curvatures 1..10)
QUAD_LR = {"sgd": 0.02, "lion": 0.01, "adahessian": 0.1, "gravity": 1.0, "shampoo": 0.1, "mfac": 0.1}
#: M-FAC's empirical Fisher shrinks with the gradient on a noise-free quadratic, so its step ~ m lr / |g| grows
#: near the minimum at the paper's damping 1e-4 (it diverges at every lr here); the test uses damping 1e-2.
QUAD_KWARGS = {"mfac": {"damp": 1e-2}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The problems here are tiny: one intra-op thread, as the experiment runner uses (extra
    threads only contend, and slow these tests many times over on a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.parametrize("name", OPTIMIZERS.names())  # every registry entry, including ones added later
def test_every_optimizer_lowers_a_quadratic(name):
    rows = run_optimizer("quadratic", name, QUAD_LR.get(name, 0.05), seed=0, steps=60, log_every=60,
                         optimizer_kwargs=QUAD_KWARGS.get(name))
    start, end = _first_curve(rows, "loss"), _summary(rows)["loss"]
    assert math.isfinite(end) and end < 0.5 * start, (name, start, end)


def test_adahessian_takes_the_authors_defaults():
    """amirgholami/adahessian image_classification/optim_adahessian.py: betas (0.9, 0.999), eps 1e-4,
    weight_decay 0, hessian_power 1 (pytorch_optimizer's own eps is 1e-16); a YAML value still wins."""
    import torch

    x = torch.zeros(3, requires_grad=True)
    group = get_optimizer("adahessian").build([x], 0.15).param_groups[0]
    assert (tuple(group["betas"]), group["eps"], group["weight_decay"], group["hessian_power"]) == \
        ((0.9, 0.999), 1e-4, 0.0, 1.0)
    assert get_optimizer("adahessian").build([x], 0.15, eps=1e-8).param_groups[0]["eps"] == 1e-8


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
    n = 1000  # the bound below scales with 1/sqrt(n): fewer samples, same test
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
    """Reddi et al.: Adam drifts to x = +1, AMSGrad (the paper's, no bias correction) to the optimum x = -1."""
    kw = dict(seed=0, steps=101000, log_every=101000, optimizer_kwargs={"betas": (0.9, 0.99)}, curves=False)
    adam = _summary(run_optimizer("amsgrad_online", "adam", 0.5, **kw))
    ams = _summary(run_optimizer("amsgrad_online", "amsgrad", 0.5, **kw))
    assert adam["final_x"] > 0.9
    assert ams["final_x"] < -0.9
    assert ams["avg_regret"] < adam["avg_regret"]


def test_amsgrad_is_the_papers_algorithm_without_bias_correction():
    """Two steps by hand: m, v, v_max with no 1 - beta^t correction; torch's variant differs."""
    import torch

    from flowrepro.optim.registry import get_optimizer

    x = torch.nn.Parameter(torch.tensor([1.0]))
    opt = get_optimizer("amsgrad").build([x], lr=0.1, betas=[0.5, 0.5], eps=0.0)
    expected, m, v, v_max = 1.0, 0.0, 0.0, 0.0
    for g in (2.0, -1.0):
        x.grad = torch.tensor([g])
        opt.step()
        m, v = 0.5 * m + 0.5 * g, 0.5 * v + 0.5 * g * g
        v_max = max(v_max, v)
        expected -= 0.1 * m / v_max ** 0.5
        assert x.item() == pytest.approx(expected, rel=1e-6)
    y = torch.nn.Parameter(torch.tensor([1.0]))
    library = get_optimizer("amsgrad_torch").build([y], lr=0.1, betas=[0.5, 0.5])
    y.grad = torch.tensor([2.0])
    library.step()
    assert y.item() == pytest.approx(1.0 - 0.1, rel=1e-4)  # bias-corrected first step: lr * sign(g)
    assert abs(y.item() - (1.0 - 0.1 * 1.0 / 2.0 ** 0.5)) > 1e-3  # the paper's first step: lr * m / sqrt(v)


def test_projection_and_lr_decay_keep_x_in_box():
    rows = run_optimizer("amsgrad_online", "sgd", 10.0, seed=0, steps=300, log_every=1)
    xs = [r["value"] for r in rows if r["metric"] == "curve_x"]
    assert all(-1.0 <= x <= 1.0 for x in xs)


def test_reference_target_hand_computed():
    """AlgoPerf-style target: best over references of (worst over seeds of (best along the run))."""
    def curve(method, seed, values, wall=0.1):
        return [{"dataset": "p", "method": method, "seed": seed, "metric": "curve_loss", "nfe": 10 * i,
                 "value": v, "wall_s": wall * i} for i, v in enumerate(values)]

    rows = (curve("adam", 0, [5, 3, 2, 2.5]) + curve("adam", 1, [5, 4, 3, 3])      # best 2, 3 -> worst 3
            + curve("adamw", 0, [5, 2, 1]) + curve("adamw", 1, [5, 4, 4])          # best 1, 4 -> worst 4
            + curve("new", 0, [5, 2.5, 1]) + curve("new", 1, [5, 6, 7]))
    assert reference_target(rows, "loss", "min", ["adam", "adamw"]) == 3  # min(3, 4)
    assert reference_target(rows, "loss", "max", ["adam"]) == 5
    assert math.isnan(reference_target(rows, "loss", "min", ["absent"]))
    hits = time_to_target(rows, "loss", 3, "min")
    assert hits[("p", "adam", 0)] == (10.0, pytest.approx(0.1))
    assert hits[("p", "adam", 1)] == (20.0, pytest.approx(0.2))
    assert hits[("p", "adamw", 1)] == (math.inf, math.inf)
    assert hits[("p", "new", 0)] == (10.0, pytest.approx(0.1))
    assert hits[("p", "new", 1)] == (math.inf, math.inf)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One small experiment with every kind of row (and a trajectory file), shared by two tests."""
    experiment = {
        "id": "tiny_optim", "kind": "optimizer",
        "problems": [
            {"name": "diffgrad_f1", "steps": 30, "deterministic": True},
            {"name": "quadratic", "steps": 30, "log_every": 5,
             "target": {"metric": "loss", "value": 1.0, "mode": "min"}},
            {"name": "rosenbrock", "steps": 20, "log_every": 5,
             "target": {"metric": "loss", "mode": "min", "reference": ["adam"]}},
            {"name": "cifar10_resnet20", "scales": ["paper"], "steps": 10},  # skipped at this scale
        ],
        "optimizers": ["adam", {"name": "sgd", "lr_grid": [0.01, 0.05]}],
        "lr_grid": [0.01, 0.1],
        "optimizer_kwargs": {"adam": {"betas": [0.9, 0.99]}},
        "performance_profile": {"metric": "steps_to_target", "tau": [1, 2]},
        "lr_batch_scaling": {"problem": "digits_linear", "optimizers": ["sgd"], "batch_sizes": [16, 64],
                             "lr_grid": [0.5, 4.0, 32.0], "steps": 3},
    }
    out = tmp_path_factory.mktemp("tiny_optim") / "metrics.csv"
    run_optimizer_experiment(experiment, {"seeds": [0, 1], "name": "tiny"}, str(out))
    return out


def test_experiment_writes_tidy_table(tiny_run):
    tmp_path, table = tiny_run.parent, read_table(tiny_run)
    assert list(table.columns) == TIDY_COLUMNS
    metrics = set(table.metric)
    assert {"final_x", "final_gap", "best_lr", "best_lr_at_grid_edge", "steps_to_target", "seconds_to_target",
            "loss", "target_loss", "max_stable_lr", "lr_exponent", "perf_profile_tau=1", "curve_loss"} <= metrics
    assert set(table.experiment) == {"tiny_optim"} and set(table.scale) == {"tiny"}
    assert "cifar10_resnet20" not in set(table.dataset)
    # deterministic problem ran one seed; the quadratic ran both
    assert set(table[(table.dataset == "diffgrad_f1") & (table.metric == "final_x")].seed) == {0}
    assert set(table[(table.dataset == "quadratic") & (table.metric == "loss")].seed) == {0, 1}
    # one best_lr per (problem, optimizer, seed), drawn from that optimizer's grid
    best = table[(table.metric == "best_lr") & (table.method == "sgd")]
    assert set(best.value) <= {0.01, 0.05}
    # reference target: the reference reaches it in every seed, one time per (optimizer, seed)
    rosen = table[(table.dataset == "rosenbrock") & (table.metric == "steps_to_target")]
    assert len(rosen) == 4 and rosen[rosen.method == "adam"].value.map(math.isfinite).all()
    # every iterate of the chosen lr's runs on the 2-D problem, beside the table
    arrays = load_npz(tmp_path / "trajectories.npz")
    runs = json.loads(str(arrays["index"]))["runs"]
    assert {(r["problem"], r["optimizer"], r["seed"]) for r in runs} == {
        ("rosenbrock", m, s) for m in ("adam", "sgd") for s in (0, 1)}
    for run in runs:
        path = arrays[run["key"]]
        assert path.shape[1] == 2 and 2 <= len(path) <= 21  # start + one point per step until any divergence
        if run["optimizer"] == "adam":  # converges: all 20 steps, and the path is the chosen lr's run
            last = table[(table.dataset == "rosenbrock") & (table.method == "adam")
                         & (table.metric == "curve_x") & (table.seed == run["seed"]) & (table.nfe == 20)]
            assert len(path) == 21 and path[-1, 0] == pytest.approx(float(last.value.iloc[0]))


def test_trajectory_and_batch_scaling_figures(tiny_run):
    """The contour plot with each optimizer's paths, and the largest stable lr against batch size."""
    from flowrepro.plots.optim import lr_vs_batch, trajectories

    out_dir = tiny_run.parent / "figures"
    written = trajectories(str(tiny_run.with_name("trajectories.npz")), str(out_dir))
    written.append(lr_vs_batch(read_table(tiny_run), str(out_dir / "lr_vs_batch.png")))
    assert {Path(p).name for p in written} == {"trajectories_rosenbrock.png", "lr_vs_batch.png"}
    for png in written:
        assert Path(png).stat().st_size > 0 and Path(png).with_suffix(".pdf").exists()


def test_diffgrad_oscillation_metrics_count_crossings_and_amplitude():
    """osc_crossings counts sign changes of x - x* in the last steps, osc_amplitude their largest |x - x*|."""
    import torch

    from flowrepro.optim import problems  # noqa: F401  (registers the problems)
    from flowrepro.registry import PROBLEMS

    problem = PROBLEMS.get("diffgrad_f3")(seed=0)
    x = problem.params[0]
    for t, value in enumerate([0.3, -0.2, 0.1, -0.05, 0.02]):  # x* = 0 for F3: 4 crossings, amplitude 0.3
        with torch.no_grad():
            x.fill_(value)
        problem.after_step(t)
    summary = problem.summary()
    assert summary["osc_crossings"] == 4 and summary["osc_amplitude"] == pytest.approx(0.3, abs=1e-6)
