"""Peak memory of the sample and evaluate stages at two sample counts: it must not grow with the
count beyond the output arrays (batches of ``sample_batch``, runs streamed to disk, samples read
back one run at a time).

    python benchmarks/sample_memory.py                      # 512 and 4096 CIFAR-10-shaped samples
    python benchmarks/sample_memory.py --counts 64 256      # what CI runs (tests/test_benchmarks.py)
    python benchmarks/sample_memory.py --network ddpm_cifar10 --device cuda   # the paper network on a GPU

Each stage runs as its own process (as Snakemake runs it); its peak resident memory comes from
the kernel (``os.wait4``). Printed per count: peak RSS, the bytes of the stage's output-sized
arrays (the samples of one run and its noise; for evaluate the generated and reference sets of one
run), and the rest (peak - outputs): the rest at the larger count over the rest at the smaller is
the growth ratio, 1.0 when memory does not grow with the count. Data are random CIFAR-shaped images
(3x32x32); the network defaults to the small ``unet_smoke`` layout so that CPU runs take seconds:
the property measured is the stage's, not the network's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def peak_rss_mb(command: list[str], env: dict) -> float:
    """Run ``command``; return its peak resident set size in MB (Linux reports KB)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")
    return usage.ru_maxrss / 1024


def write_inputs(root: Path, counts: list[int], network: str, device: str, batch: int) -> tuple[Path, Path]:
    """A CIFAR-shaped dataset, an experiment with one model and two Euler runs, and a scale per count."""
    from flowrepro import io

    rng = np.random.default_rng(0)
    n_train = max(counts)
    io.save_npz(root / "cifar10.npz", train=rng.uniform(-1, 1, (n_train, *SHAPE)).astype(np.float32),
                train_labels=rng.integers(0, 10, n_train), test=rng.uniform(-1, 1, (1000, *SHAPE)).astype(np.float32),
                test_labels=rng.integers(0, 10, 1000))
    io.write_checksum(root / "cifar10.npz")  # stages check the data file against it
    experiment = {"id": "memory", "title": "memory", "source": "benchmark", "kind": "flow", "datasets": ["images"],
                  "models": {"rf1": {"path": "linear"}}, "sampling": {"euler": {"nfe": [1, 2]}},
                  "claims": [{"id": "c", "text": "t", "expr": "nfe[method=rf1, nfe=1] < 2"}]}
    (root / "memory.yaml").write_text(yaml.safe_dump(experiment))
    base = yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text())
    base.update(seeds=[0], device=device)
    base.pop("fid_inception")  # the memory of sampling and of the classifier metrics; Inception needs acquired weights
    base["flow_images"].update(network=network, overrides={"steps": 1, "batch_size": 4, "warmup": 0},
                               sample_batch=batch, trajectory_steps=2, trajectory_samples=64, w2_points=min(counts))
    for n in counts:
        scale = json.loads(json.dumps(base))
        scale["flow_images"]["n_eval"] = n
        (root / f"scale{n}.yaml").write_text(yaml.safe_dump(scale))
    return root / "memory.yaml", root / "cifar10.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs=2, default=[512, 4096])
    parser.add_argument("--network", default="unet_smoke")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256, help="sample_batch")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cli = [sys.executable, "-m", "flowrepro.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experiment, data = write_inputs(root, args.counts, args.network, args.device, args.batch)
        small = root / f"scale{args.counts[0]}.yaml"
        model = root / "rf1.pt"
        subprocess.run([*cli, "train", "--experiment", str(experiment), "--scale", str(small), "--dataset", "cifar10",
                        "--model", "rf1", "--data", str(data), "--out", str(model), "--no-progress"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        classifier = root / "cifar10.pt"
        subprocess.run([*cli, "classifier", "--data", str(data), "--out", str(classifier), "--steps", "5"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        rest = {}
        print(f"{'stage':9} {'count':>6} {'peak MB':>9} {'outputs MB':>11} {'rest MB':>9}")
        for n in args.counts:
            scale, samples = root / f"scale{n}.yaml", root / f"samples{n}.npz"
            run_mb = n * int(np.prod(SHAPE)) * 4 / 2**20  # one run's samples (float32)
            peaks = {
                "sample": (peak_rss_mb([*cli, "sample", "--experiment", str(experiment), "--scale", str(scale),
                                        "--model-file", str(model), "--out", str(samples)], env), 2 * run_mb),  # + its noise
                "evaluate": (peak_rss_mb([*cli, "evaluate", "--experiment", str(experiment), "--scale", str(scale),
                                          "--data", str(data), "--samples", str(samples), "--classifiers", str(classifier),
                                          "--out", str(root / f"metrics{n}.csv")], env), 2 * run_mb),  # + the data rows' draw
            }
            for stage, (peak, outputs) in peaks.items():
                rest[stage, n] = peak - outputs
                print(f"{stage:9} {n:>6} {peak:>9.0f} {outputs:>11.1f} {peak - outputs:>9.0f}")
        low, high = args.counts
        for stage in ("sample", "evaluate"):
            print(f"{stage}: memory beyond the outputs at {high} / at {low} samples = {rest[stage, high] / rest[stage, low]:.2f}")


if __name__ == "__main__":
    main()
