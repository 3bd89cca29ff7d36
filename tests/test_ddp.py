"""Data-parallel training (flowrepro.generative.distributed) on CPU: gloo, two processes under torchrun.

Two ranks at a global batch of 32 must train as one process at batch 32: every rank draws the same
batch and keeps half, and DDP averages the gradients. What may differ is the order of float sums
(the all-reduce adds two half-batch gradients), measured here at 1.3e-7 to 1.4e-7 relative in any step's
loss over 40 steps and 5.5e-7 relative in the trained network's output on fixed inputs. Training
on a wrong batch (both ranks the same rows, a rank's own draws, one rank's loss reported) moves each
step's loss by the batch noise instead, 6% (median step-to-step change at batch 32). The tolerance,
1e-4 relative, is orders of magnitude from both. Weights are compared through the network's output:
parameters the loss barely sees (a conv bias before a GroupNorm) have gradients at rounding level,
which Adam's normalisation turns into steps of up to lr, so they drift apart without changing the
function (measured: 0.039 on a conv bias, 6e-8 for the median parameter).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, shrink_scale

from flowrepro import io
from flowrepro.config import load_scale
from flowrepro.generative.distributed import Distributed
from flowrepro.generative.training import dropout_seed
from flowrepro.stages import acquire, train

EXPERIMENT = REPO / "config/experiments/rectified_flow.yaml"
TOLERANCE = 1e-4  # relative; see the module docstring


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A digits scale (unet_smoke, 40 steps of batch 32, checkpoints every 20), its data and rf1's description."""
    root = tmp_path_factory.mktemp("ddp")
    scale = shrink_scale(yaml.safe_load((REPO / "config/scales/tiny.yaml").read_text()))
    scale["flow_images"].update(steps=40, batch_size=32, checkpoint_every=20)
    (root / "scale.yaml").write_text(yaml.safe_dump(scale))
    acquire.run("digits", str(root / "digits.npz"), 0, 0, 0, str(root), None)
    description = train.describe(str(EXPERIMENT), "rf1", "digits", load_scale(root / "scale.yaml"))
    return root, description


def torchrun(job, out: Path, signal_rank_step: tuple[int, int] | None = None):
    root, description = job
    logs = out.parent / f"{out.stem}.writes"
    logs.mkdir(exist_ok=True)
    extra = [str(v) for v in signal_rank_step] if signal_rank_step else []
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(REPO / "tests/ddp_worker.py"), json.dumps(description), str(root / "scale.yaml"),
                          str(root / "digits.npz"), str(out), str(logs), *extra],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    writes = {rank: (logs / f"writes.rank{rank}.txt").read_text().split("\n")[:-1] for rank in (0, 1)}
    return run, writes


@pytest.fixture(scope="module")
def trained(job):
    """The same model trained by one process (in this one) and by two under torchrun."""
    root, description = job
    one, two = root / "one.pt", root / "two.pt"
    train.run(description, str(root / "scale.yaml"), str(root / "digits.npz"), str(one), progress=False)
    run, writes = torchrun(job, two)
    assert run.returncode == 0, run.stderr[-3000:]
    return one, two, writes


def _output(model_file: Path):
    """The trained (EMA) network's velocity on fixed inputs."""
    _, models = train.load_models(str(model_file))
    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(64, 1, 8, 8, generator=generator), torch.rand(64, generator=generator)
    with torch.no_grad():
        return models[0](x, t)


def test_shard_gives_each_rank_its_rows_of_the_global_batch_and_refuses_a_remainder():
    batch = torch.arange(12)
    shards = [Distributed(rank, rank, 3, "cpu").shard(batch) for rank in range(3)]
    assert torch.equal(torch.cat(shards), batch)
    with pytest.raises(ValueError, match="batch of 10 cannot be split evenly over 4 processes"):
        Distributed(0, 0, 4, "cpu").shard(torch.arange(10))


def test_dropout_streams_differ_between_ranks_and_steps():
    seeds = {dropout_seed(seed, rank, step) for seed in range(3) for rank in range(8) for step in range(1000)}
    assert len(seeds) == 3 * 8 * 1000


@pytest.mark.slow  # two torchrun launches of the train stage: about 30 s on 2 cores
def test_two_processes_train_as_one_at_the_same_global_batch_and_only_rank_0_writes(trained):
    one, two, writes = trained
    single, parallel = io.load_model_file(one)["seeds"][0]["losses"], io.load_model_file(two)["seeds"][0]["losses"]
    assert len(single) == len(parallel) == 40
    gap = max(abs(a - b) / abs(a) for a, b in zip(single, parallel))
    print(f"\nlargest relative loss gap, 2 ranks vs 1 process: {gap:.2e}")
    assert gap <= TOLERANCE
    expected = _output(one)
    assert float((_output(two) - expected).norm() / expected.norm()) <= TOLERANCE
    assert writes[1] == []  # rank 1 writes nothing: neither checkpoints nor the model file
    assert writes[0] == [f"save_tree {two}.seed0.ckpt", f"save_model_file {two}"]  # the step-20 checkpoint, the output
    assert not Path(f"{two}.seed0.ckpt").exists()


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_one_step_and_the_resumed_run_matches(job, trained, tmp_path):
    """SIGUSR1 reaches rank 1 after step 7; the ranks agree at the next sync point (the step-20
    checkpoint), rank 0 writes the checkpoint, both stop; a rerun resumes to the uninterrupted result."""
    _, uninterrupted, _ = trained
    out = tmp_path / "stopped.pt"
    run, writes = torchrun(job, out, signal_rank_step=(1, 7))
    assert run.returncode != 0
    assert re.search(r"rank 1: digits/\w+/seed0: SIGUSR1 at step 20; checkpoint", run.stderr), run.stderr[-3000:]
    assert re.search(r"rank 0: digits/\w+/seed0: a stop signal to another rank at step 20; checkpoint", run.stderr)
    assert writes == {0: [f"save_tree {out}.seed0.ckpt"], 1: []} and not out.exists()
    assert io.load_tree(Path(f"{out}.seed0.ckpt"), "checkpoint")["step"] == 20

    run, _ = torchrun(job, out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"resumed from checkpoint {out}.seed0.ckpt at step 20" in run.stdout
    resumed, expected = io.load_model_file(out)["seeds"][0], io.load_model_file(uninterrupted)["seeds"][0]
    assert resumed["losses"] == expected["losses"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
