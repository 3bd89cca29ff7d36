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

from flowrepro import io
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


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "slurm-time-limit"])
def test_killed_training_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path, long_scale, stop):
    """SIGKILL loses the steps since the last checkpoint; SIGTERM (SLURM's time limit or preemption)
    writes a checkpoint at the end of the step and exits non-zero, so the job's retry resumes there."""
    data = tmp_path / "moons.npz"
    acquire.run("moons", str(data), 2000, 500, 0, str(tmp_path), None)
    reference = tmp_path / "reference.pt"
    assert _train(reference, long_scale, data).returncode == 0

    out = tmp_path / "killed.pt"
    checkpoint = Path(f"{out}.seed0.ckpt")
    process = subprocess.Popen([sys.executable, "-m", "flowrepro.cli", "train", "--experiment", str(EXPERIMENT), "--scale", str(long_scale),
                                "--dataset", "moons", "--model", "rf1", "--data", str(data), "--out", str(out), "--no-progress"],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run past the first checkpoint
    assert process.poll() is None, "training finished before it could be killed; raise steps"
    os.kill(process.pid, stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert not out.exists() and checkpoint.exists()
    step_at_kill = io.load_tree(checkpoint, "checkpoint")["step"]
    assert 0 < step_at_kill < 4000
    if stop == signal.SIGTERM:  # written at the signal, not at the last periodic checkpoint
        assert process.returncode == 143 and f"SIGTERM at step {step_at_kill}; checkpoint" in stderr

    rerun = _train(out, long_scale, data)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from checkpoint {checkpoint} at step" in rerun.stdout
    assert not checkpoint.exists()  # cleaned up once the output is complete
    resumed, uninterrupted = io.load_model_file(out), io.load_model_file(reference)
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


def _one_step_change(config: TrainConfig, tmp_path, name: str) -> float:
    """Parameter distance moved by training ``config`` from a fixed initialisation."""
    from flowrepro.generative.couplings import independent

    data = torch.randn(256, 2) * 5
    torch.manual_seed(0)
    model = build_mlp(2, width=16, depth=1)
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    train_flow(model, lambda n, g: independent(data, n, g), LinearPath(), config, seed=0, run_name=name,
               checkpoint=tmp_path / f"{name}.ckpt", progress=False)
    return float((torch.nn.utils.parameters_to_vector(model.parameters()).detach() - before).norm())


def test_warmup_starts_at_zero_learning_rate_and_clipping_bounds_the_step(tmp_path):
    base = dict(steps=1, batch_size=64, lr=1.0, optimizer="sgd")
    assert _one_step_change(TrainConfig(**base), tmp_path, "plain") > 0.1
    assert _one_step_change(TrainConfig(**base, warmup=10), tmp_path, "warm") == 0.0  # step 0 at lr * 0 / warmup
    clipped = _one_step_change(TrainConfig(**base, grad_clip=1e-3), tmp_path, "clip")
    assert 0 < clipped <= 1e-3 * 1.0001  # SGD's step is lr * the clipped gradient
    assert _one_step_change(TrainConfig(steps=2, batch_size=64, lr=1.0, optimizer="sgd", warmup=10), tmp_path, "warm2") > 0


def test_optimizer_recipe_options_reach_the_optimizer():
    from flowrepro.generative.training import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = build_optimizer("adam", params, 2e-4, betas=[0.9, 0.99], eps=1e-6, weight_decay=0.0)
    assert adam.defaults["betas"] == (0.9, 0.99) and adam.defaults["eps"] == 1e-6 and isinstance(adam, torch.optim.Adam)
    assert build_optimizer("adamw", params, 1e-3).defaults["weight_decay"] == 0.01  # unset: torch's own default


def test_random_horizontal_flip_mirrors_about_half_and_leaves_the_coupling_stream_alone():
    from flowrepro.generative.couplings import independent
    from flowrepro.generative.data_views import RandomHorizontalFlip

    images = torch.arange(400 * 4, dtype=torch.float32).reshape(400, 1, 1, 4)
    view = RandomHorizontalFlip(images, seed=0)
    batch = view[torch.arange(400)]
    flipped = (batch == images.flip(-1)).all(dim=(1, 2, 3))
    assert ((batch == images).all(dim=(1, 2, 3)) | flipped).all()  # each image is itself or its mirror
    assert 150 < int(flipped.sum()) < 250
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x0_plain, _ = independent(images, 16, g1)
    x0_flip, _ = independent(RandomHorizontalFlip(images, seed=0), 16, g2)
    assert torch.equal(x0_plain, x0_flip)  # the flips draw from their own generator


def test_pairs_on_disk_read_the_same_batches_as_pairs_in_memory(tmp_path):
    import numpy as np

    from flowrepro import io
    from flowrepro.generative.couplings import reflow
    from flowrepro.generative.data_views import PairsOnDisk

    pairs = np.random.default_rng(0).standard_normal((2, 2, 50, 3)).astype(np.float32)  # (seeds, 2, n, d)
    with io.npy_memmap(tmp_path / "p.npy", pairs.shape) as out:
        out[:] = pairs
    for row in range(2):
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        disk = reflow(PairsOnDisk(str(tmp_path / "p.npy"), row, "cpu"), 8, g1)
        memory = reflow(torch.from_numpy(pairs[row]), 8, g2)
        assert all(torch.equal(a, b) for a, b in zip(disk, memory))
    with pytest.raises(ValueError, match="seed index 5"):
        PairsOnDisk(str(tmp_path / "p.npy"), 5, "cpu")
