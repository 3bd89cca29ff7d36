"""Training: deterministic, resumable after a kill, stops on NaN with a message naming run and step."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flowrepro.generative.paths import LinearPath
from flowrepro.generative.training import TrainConfig, TrainingDiverged, train_flow
from flowrepro.models.mlp import build_mlp
from flowrepro.stages import acquire

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "config/experiments/rectified_flow.yaml"


def _train(out: Path, scale: Path, data: Path, timeout=300):
    return subprocess.run([sys.executable, "-m", "flowrepro.cli", "train", "--experiment", str(EXPERIMENT), "--scale", str(scale),
                           "--dataset", "moons", "--model", "rf1", "--data", str(data), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def long_scale(tiny_scale):
    scale = yaml.safe_load(tiny_scale.read_text())
    scale["flow2d"].update(steps=4000, checkpoint_every=100)
    tiny_scale.write_text(yaml.safe_dump(scale))
    return tiny_scale


def test_killed_training_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path, long_scale):
    data = tmp_path / "moons.npz"
    acquire.run("moons", str(data), 2000, 500, 0, str(tmp_path), None)
    reference = tmp_path / "reference.pt"
    assert _train(reference, long_scale, data).returncode == 0

    out = tmp_path / "killed.pt"
    checkpoint = Path(f"{out}.seed0.ckpt")
    process = subprocess.Popen([sys.executable, "-m", "flowrepro.cli", "train", "--experiment", str(EXPERIMENT), "--scale", str(long_scale),
                                "--dataset", "moons", "--model", "rf1", "--data", str(data), "--out", str(out), "--no-progress"])
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run past the first checkpoint
    assert process.poll() is None, "training finished before it could be killed; raise steps"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists() and checkpoint.exists()
    step_at_kill = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < step_at_kill < 4000

    rerun = _train(out, long_scale, data)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from checkpoint {checkpoint} at step" in rerun.stdout
    assert not checkpoint.exists()  # cleaned up once the output is complete
    resumed, uninterrupted = torch.load(out, weights_only=False), torch.load(reference, weights_only=False)
    assert resumed["seeds"][0]["losses"] == uninterrupted["seeds"][0]["losses"]
    for key, value in uninterrupted["seeds"][0]["state_dict"].items():
        torch.testing.assert_close(resumed["seeds"][0]["state_dict"][key], value, rtol=0, atol=0)


def test_nan_loss_stops_with_run_and_step(tmp_path):
    model = build_mlp(2, width=8, depth=1)
    data = torch.randn(100, 2)
    data[::3] = math.nan  # a poisoned dataset: some batch will contain NaN
    from flowrepro.generative.couplings import independent

    with pytest.raises(TrainingDiverged, match=r"myrun/seed0: loss is nan at step \d+"):
        train_flow(model, lambda n, g: independent(data, n, g), LinearPath(), TrainConfig(steps=50, batch_size=16, lr=1e-3),
                   seed=0, run_name="myrun/seed0", checkpoint=tmp_path / "c.ckpt", progress=False)


def test_training_is_deterministic_and_lowers_the_loss(tmp_path):
    from flowrepro.generative.couplings import independent

    data = torch.from_numpy(acquire.make_dataset("8gaussians", 2000, 10)["train"])
    losses = []
    for run in range(2):
        torch.manual_seed(0)
        model = build_mlp(2, width=32, depth=2)
        losses.append(train_flow(model, lambda n, g: independent(data, n, g), LinearPath(), TrainConfig(steps=300, batch_size=128, lr=3e-3),
                                 seed=0, run_name="det", checkpoint=tmp_path / f"{run}.ckpt", progress=False))
    assert losses[0] == losses[1]
    assert sum(losses[0][-50:]) / 50 < 0.8 * sum(losses[0][:50]) / 50
