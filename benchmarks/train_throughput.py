"""Images per second of a training step: torchcfm's loop against flowrepro's, side by side.

    python benchmarks/train_throughput.py                 # CUDA: ddpm_cifar10 and ddpm_mnist at batch 128
    python benchmarks/train_throughput.py --device cpu    # CPU: smoke size (unet_smoke, batch 8)
    python benchmarks/train_throughput.py --network ddpm_mnist --channels 1 --batch 16 --steps 10

(a) ``reference_loop.reference_train``: torchcfm's CIFAR-10 loop (plain Adam, fp32, state-dict EMA
loop, host batches, ``.item()`` every step). (b) ``flowrepro.generative.training.train_flow``
itself with the paper recipe's settings (Adam, warm-up, clipping 1.0, EMA 0.9999, bf16) and what
the device offers (on CUDA: bf16 autocast, channels_last, fused Adam; foreach Adam elsewhere;
data on the device; losses read every ``--sync-every`` steps; ``--compile``).

Both start from the same initial weights. Each run trains ``--warmup-steps`` untimed steps then
``--steps`` timed ones (timed between two points where the host has waited for the device);
runs alternate a, b, a, b, ... ``--repeats`` times, so a load that drifts (other processes on a
shared CPU) hits both alike, and the median run of each is reported. Peak memory: CUDA's
``max_memory_allocated`` per run; on a CPU the process's peak resident set (VmHWM, reset
before each run through /proc/self/clear_refs where the kernel allows it).
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_loop beside this file

CUDA_CASES = [("ddpm_cifar10", 3), ("ddpm_mnist", 1)]  # (network preset, image channels), 32x32


def _rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return math.nan


def _reset_peak(device: str) -> bool:
    """Start a new peak-memory window; False where it cannot be reset (the CPU peak is then the process's)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def _peak_mb(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_peak_mb()


class _Clock:
    """Wall time between the end of the warm-up and the end of the run, read where the host waited."""

    def __init__(self, device: str, warmup: int, total: int) -> None:
        self.device, self.warmup, self.total, self.marks = device, warmup, total, {}

    def __call__(self, step: int, *_) -> None:
        if step in (self.warmup, self.total):
            if self.device == "cuda":
                import torch

                torch.cuda.synchronize()
            self.marks[step] = time.perf_counter()

    def seconds(self) -> float:
        return self.marks[self.total] - self.marks[self.warmup]


def run_reference(initial, data_host, args, device: str) -> tuple[float, float]:
    """(images/s, peak MB) of one run of torchcfm's loop."""
    import torch
    from reference_loop import reference_train

    from flowrepro.generative.losses import mse
    from flowrepro.generative.paths import LinearPath

    torch.backends.cudnn.benchmark = False  # torch's default, as torchcfm runs; train_flow turns it on for the process
    model = copy.deepcopy(initial).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    total = args.warmup_steps + args.steps
    clock = _Clock(device, args.warmup_steps, total)
    _reset_peak(device)
    reference_train(model, ema, data_host, LinearPath(), mse, total, args.batch, lr=2e-4, seed=0, device=device,
                    ema_decay=0.9999, warmup=5000, grad_clip=1.0, on_step=clock)
    return args.steps * args.batch / clock.seconds(), _peak_mb(device)


def run_flowrepro(initial, data_device, args, device: str) -> tuple[float, float]:
    """(images/s, peak MB) of one run of ``train_flow``."""
    from flowrepro.generative.couplings import independent
    from flowrepro.generative.paths import LinearPath
    from flowrepro.generative.training import TrainConfig, train_flow

    model = copy.deepcopy(initial).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    total = args.warmup_steps + args.steps
    config = TrainConfig(steps=total, batch_size=args.batch, lr=2e-4, checkpoint_every=10 * total, optimizer="adam",
                         ema_decay=0.9999, bf16=True, compile=args.compile, warmup=5000, grad_clip=1.0,
                         sync_every=args.sync_every)
    clock = _Clock(device, args.warmup_steps, total)
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as scratch:
        train_flow(model, lambda n, g: independent(data_device, n, g), LinearPath(), config, seed=0, run_name="bench",
                   checkpoint=Path(scratch) / "bench.ckpt", device=device, progress=False, ema_model=ema,
                   on_sync=clock)
    return args.steps * args.batch / clock.seconds(), _peak_mb(device)


def measure(network: str, channels: int, args, device: str) -> dict:
    import torch

    from flowrepro.models.unet import build_unet, parameter_count

    torch.manual_seed(0)
    shape = (channels, args.size, args.size)
    initial = build_unet(shape, network)
    data_host = torch.rand(args.images, *shape) * 2 - 1  # pixel values in [-1, 1]; content does not change the cost
    data_device = data_host.to(device)
    rates: dict[str, list[float]] = {"reference": [], "flowrepro": []}
    peaks: dict[str, list[float]] = {"reference": [], "flowrepro": []}
    for _ in range(args.repeats):
        for name, run in (("reference", lambda: run_reference(initial, data_host, args, device)),
                          ("flowrepro", lambda: run_flowrepro(initial, data_device, args, device))):
            rate, peak = run()
            rates[name].append(rate)
            peaks[name].append(peak)
    return {"network": network, "shape": shape, "params_m": parameter_count(initial) / 1e6, "rates": rates,
            "peaks": peaks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--network", help="a flowrepro.models.unet.NETWORKS preset (default: CUDA the paper's and "
                                          "MNIST's, CPU unet_smoke)")
    parser.add_argument("--channels", type=int, default=3, help="image channels with --network")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--batch", type=int, help="global batch (default: CUDA 128, CPU 8)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default: CUDA 200, CPU 20)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps first (default: CUDA 50, CPU 10)")
    parser.add_argument("--sync-every", type=int, default=10, help="flowrepro reads its losses every this many steps")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop")
    parser.add_argument("--images", type=int, default=4096, help="training images held (random pixels)")
    parser.add_argument("--compile", action="store_true", help="torch.compile flowrepro's network")
    args = parser.parse_args(argv)

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device == "cuda"
    args.batch = args.batch or (128 if cuda else 8)
    args.steps = args.steps or (200 if cuda else 20)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (50 if cuda else 10)
    if args.warmup_steps % args.sync_every or args.steps % args.sync_every or not args.warmup_steps:
        parser.error("--warmup-steps (> 0) and --steps must be multiples of --sync-every: flowrepro's loop is timed at its sync points")
    cases = [(args.network, args.channels)] if args.network else (CUDA_CASES if cuda else [("unet_smoke", 3)])
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    memory = "peak allocated (CUDA)" if cuda else ("peak RSS" if _reset_peak("cpu") else "process peak RSS (not resettable)")
    print(f"train_throughput: {where}, torch {torch.__version__}; {args.repeats} alternating runs per loop, each "
          f"{args.warmup_steps} warm-up + {args.steps} timed steps; flowrepro: sync every {args.sync_every}, "
          f"compile {args.compile}; memory: {memory}")
    for network, channels in cases:
        result = measure(network, channels, args, device)
        reference, flowrepro = (statistics.median(result["rates"][k]) for k in ("reference", "flowrepro"))
        label = f"{network} ({result['params_m']:.2f} M, {'x'.join(map(str, result['shape']))}, batch {args.batch})"
        for name in ("reference", "flowrepro"):
            runs = ", ".join(f"{r:.1f}" for r in result["rates"][name])
            print(f"  {label} {name:9s}: {statistics.median(result['rates'][name]):9.1f} images/s "
                  f"(runs: {runs}); peak memory {max(result['peaks'][name]):.0f} MB")
        print(f"  {label} ratio flowrepro / reference = {flowrepro / reference:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
