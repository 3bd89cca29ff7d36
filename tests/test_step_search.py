"""Schedule search (flowrepro.samplers.step_search): calibration noise apart, JSON round trip, the per-step-order
DPM-Solver++ against diffusers, AFS's counted NFE, monotone search, the harness hook and the workflow plan."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowrepro.data.gmm import mixture
from flowrepro.samplers.diffusion import ExactMixture, _levels, make_scheduler, run_scheduler
from flowrepro.samplers.nfe import NFECounter
from flowrepro.samplers import step_search as ss

SMALL = {"population": 6, "generations": 3, "parents": 3, "n_calibration": 32}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exact16():
    return ExactMixture(mixture("gmm16d"))


def test_search_sees_only_calibration_noise():
    """Every first-level model input of the search is a calibration draw (seed 30000 + seed), none an evaluation draw."""
    from flowrepro.samplers.experiment import _Case

    case = _Case("gmm2d", 3, "vp", 200, 10)
    exact = ExactMixture(mixture("gmm2d"))
    s_max, seen = ss.level_of_timestep(ss.T_MAX), []
    eps = exact.eps

    def recording(x, s):
        if abs(s - s_max) < 1e-9:
            seen.append(x.clone())
        return eps(x, s)

    exact.eps = recording
    ss.search(exact, 3, "s3", 4, SMALL)
    ss.search(exact, 3, "autodiffusion", 3, SMALL)
    calib = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(ss.CALIBRATION_OFFSET + 3))
    assert seen and all(torch.equal(x, calib) for x in seen)
    assert not (torch.cdist(calib, case.noise) < 1e-12).any()  # disjoint from the harness's evaluation noise


def test_found_schedule_independent_of_evaluation_noise():
    experiment = {"datasets": ["gmm2d"], "search": {"a": {"variant": "autodiffusion", "nfe": [3], **SMALL}}}
    one = ss.load_or_search(experiment, {"seeds": [0], "n_samples": 100})
    two = ss.load_or_search(experiment, {"seeds": [0], "n_samples": 300})
    strip = lambda es: [{k: v for k, v in e.items() if k != "wall_s"} for e in es]  # noqa: E731
    assert strip(one) == strip(two)


def test_schedule_file_round_trip(tmp_path, exact16):
    entries = ss.run_searches({"datasets": ["gmm2d"], "search": {"s": {"variant": "s3", "nfe": [4], **SMALL}}}, [1])
    path = tmp_path / "schedules.json"
    ss.write_schedules(str(path), entries)
    back = ss.read_schedules(str(path))
    assert back == entries
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = ExactMixture(mixture("gmm2d"))
    mean = exact.gmm.weights @ exact.gmm.means
    assert torch.equal(ss.run_entry(exact.eps, x, entries[0], mean)[0], ss.run_entry(exact.eps, x, back[0], mean)[0])
    path.write_text(path.read_text().replace('"nfe": 4', '"nfe": 5'))
    from flowrepro.io import ChecksumMismatch
    with pytest.raises(ChecksumMismatch):
        ss.read_schedules(str(path))


@pytest.mark.parametrize("name,orders", [("dpmsolver++2m", lambda k: [2] * k),
                                         ("dpmsolver++3m", lambda k: [3] * (k - 2) + [2, 1])])
@pytest.mark.parametrize("steps", [5, 10])
def test_per_step_order_equals_diffusers(exact16, name, orders, steps):
    """All orders = 2 is diffusers' DPM-Solver++(2M); 3 with its lower-order last two steps is 3M."""
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(steps)
    levels, final = _levels(scheduler)
    ref, _ = run_scheduler(exact16.eps, x, name, steps)
    ours = ss.dpmpp_schedule(exact16.eps, x, levels + [final], orders(steps))
    assert float((ref - ours).abs().max()) < 1e-5


def test_afs_counts_one_call_less(exact16):
    x = torch.randn(8, 16, dtype=torch.float64)
    entry = {"variant": "s3", "timesteps": [999.0, 700.0, 400.0, 150.0, 40.0], "orders": [2] * 5}
    mean = exact16.gmm.weights @ exact16.gmm.means
    counts = []
    for afs in (False, True):
        model = NFECounter(exact16.eps)
        ss.run_entry(model, x, {**entry, "afs": afs}, mean)
        counts.append(model.calls)
    assert counts == [5, 4]


def test_search_improves_monotonically(exact16):
    found = ss.search(exact16, 0, "s3", 5, {**SMALL, "generations": 6})
    hist = found["fitness_history"]
    assert all(b <= a for a, b in zip(hist, hist[1:])) and hist[-1] < hist[0]
    fit = ss.exact_fitness(exact16, 0, 32)  # an independent re-evaluation of the winner on the calibration draws
    assert fit(found) == pytest.approx(found["fitness"], rel=1e-12)
    # every candidate costs exactly its budget in counted calls, AFS or not (a repeated level costs none)
    assert found["search_calls"] % 5 == 0 and 0 < found["search_calls"] <= 5 * found["evaluations"]


def test_harness_runs_searched_schedule(tmp_path):
    from flowrepro.io import read_table
    from flowrepro.samplers.experiment import run_sampler_experiment

    experiment = {"id": "t", "harness": "vp", "datasets": ["gmm2d"], "nfe": [4], "metrics": ["solver_error"],
                  "search": {"s3": {"variant": "s3", "nfe": [4], **SMALL}},
                  "samplers": {"s3": {"schedules": ["searched"], "search": "s3"}, "dpmsolver++2m": {}}}
    path = tmp_path / "schedules.json"
    ss.write_schedules(str(path), ss.run_searches(experiment, [0]))
    run_sampler_experiment(experiment, {"seeds": [0], "n_samples": 50, "schedules_file": str(path)}, str(tmp_path / "m.csv"))
    rows = read_table(tmp_path / "m.csv")
    searched = rows[(rows["schedule"] == "searched") & (rows["metric"] == "solver_error")]
    assert len(searched) == 1 and int(searched["nfe"].iloc[0]) == 4
    calls = rows[rows["metric"] == "search_calls"]
    assert list(calls["sampler"]) == ["s3"] and int(calls["value"].iloc[0]) > 0


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake not installed")
def test_workflow_plans_search_then_benchmark(tmp_path):
    for item in ("Snakefile", "config", "workflow"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, tmp_path / item)
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    out = subprocess.run(["snakemake", "-n", "-p", "--config", "experiments=[step_search]"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "rule search:" in text and "--schedules results/step_search/schedules.json" in text
    assert "rule claims:" in text
