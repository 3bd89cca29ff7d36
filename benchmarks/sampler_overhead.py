"""Sampler overhead: wall time per NFE of each sampler / one bare forward pass of the same batch.

A diffusers UNet2DModel at digits scale (8x8, 1 channel, ~0.7 M parameters) on CPU is driven by
the harness adapter (:func:`flowrepro.samplers.diffusion.run_scheduler`), which adds
``scale_model_input``, the sigma -> timestep lookup, the NFE counter and the scheduler's step.
Bare forwards and sampler runs are interleaved in one process (same thermal/load state) and the
median of ``--repeats`` rounds is reported. Target: ratio <= 1.15. On a shared, loaded machine the
side-by-side ratio is noisy (even < 1), so the adapter's own cost per NFE is also timed with a
zero-cost model and reported as 1 + adapter / bare, a low-variance estimate of the same ratio.
Our own eps-model samplers (:data:`OWN`: PLMS with its Adams-Bashforth warm-up, HB, GHVB, BDIA,
DPM-Solver-v3 with image-shaped statistics on a 400-point lambda grid, and S3's per-step-order
DPM-Solver++ with orders 1, 2, 3, 3, ...) are timed the same way, called directly (they need no
scheduler); the one-off costs of the statistics (``flowrepro ems``) and of the search are reported by
those stages, not here.

    python benchmarks/sampler_overhead.py [--batch 32] [--steps 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np


#: Samplers written here over the same ``eps(x, s)`` interface (flowrepro.samplers.momentum, .bdia).
OWN = ("plms_ab", "hb", "ghvb", "bdia", "dpm_solver_v3", "s3")


def small_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)  # 2 threads on a loaded 2-core box: 7x slower
    parser.add_argument("--samplers", nargs="*", default=None)
    args = parser.parse_args()

    import torch
    import diffusers.utils.logging as dlog

    from flowrepro.registry import SAMPLERS
    from flowrepro.samplers import bdia, dpm_solver_v3, momentum  # noqa: F401  (register OWN)
    from flowrepro.samplers import diffusion as D
    from flowrepro.samplers.nfe import NFECounter

    from flowrepro.samplers import step_search
    from flowrepro.samplers.model_statistics import EMS, ems_grid

    lambdas = ems_grid(400)  # v3's cost depends on the statistics' shape, not their values
    ems = EMS(lambdas, *(np.full((len(lambdas), 1, 8, 8), value) for value in (1.0, 0.1, 0.01)))
    s3_entry = {"variant": "s3", "timesteps": step_search._uniform_ts(args.steps),
                "orders": [min(i + 1, 3) for i in range(args.steps)], "afs": False}

    def sample(model, name: str):
        if name == "dpm_solver_v3":
            return SAMPLERS.get(name)(model, x, args.steps, ems=ems)
        if name == "s3":
            return step_search.run_entry(model, x, s3_entry)
        return SAMPLERS.get(name)(model, x, args.steps) if name in OWN else D.run_scheduler(model, x, name, args.steps)

    warnings.filterwarnings("ignore")
    dlog.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = small_unet()
    params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(args.batch, 1, 8, 8)
    t_probe = torch.full((args.batch,), 500.0)

    def eps_model(x_in, s):
        t = torch.full((x_in.shape[0],), D.timestep_for_level(s))  # evaluate at the scheduler's own sigma
        return unet(x_in, t).sample

    def bare(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            unet(x, t_probe).sample
        return (time.perf_counter() - start) / n

    def null_model(x_in, s):
        D.timestep_for_level(s)
        return torch.zeros_like(x_in)

    names = args.samplers or [*D.SCHEDULERS, *OWN]
    adapter: dict[str, float] = {}
    for name in names:  # the adapter alone (scheduler build, steps, lookups, counter): a low-noise estimate
        runs = []
        for _ in range(5):
            model = NFECounter(null_model)
            start = time.perf_counter()
            sample(model, name)
            runs.append((time.perf_counter() - start) / model.calls)
        adapter[name] = statistics.median(runs)
    per_nfe: dict[str, list[float]] = {name: [] for name in names}
    bares: list[float] = []
    calls: dict[str, int] = {}
    with torch.no_grad():
        bare(3)  # warm-up
        for _ in range(args.repeats):
            for name in names:
                model = NFECounter(eps_model)
                start = time.perf_counter()
                sample(model, name)
                elapsed = time.perf_counter() - start
                calls[name] = model.calls
                per_nfe[name].append(elapsed / model.calls)
                bares.append(bare(model.calls))  # side by side: same number of bare calls right after
    bare_s = statistics.median(bares)
    print(f"UNet2DModel 8x8x1, {params / 1e6:.2f} M params, batch {args.batch}, {args.steps} steps, "
          f"{args.threads} threads; bare forward {bare_s * 1e3:.2f} ms")
    print(f"{'sampler':16s} {'NFE':>4s} {'ms/NFE':>8s} {'ratio':>6s} {'adapter ms/NFE':>15s} {'1+adapter/bare':>15s}")
    worst = 0.0
    for name in names:
        ms = statistics.median(per_nfe[name])
        worst = max(worst, ms / bare_s)
        print(f"{name:16s} {calls[name]:4d} {ms * 1e3:8.2f} {ms / bare_s:6.3f} {adapter[name] * 1e3:15.3f} "
              f"{1 + adapter[name] / bare_s:15.3f}")
    print(f"worst ratio {worst:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
