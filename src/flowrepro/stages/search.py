"""search: the experiment's ``search:`` section -> results/<id>/schedules.json (flowrepro.samplers.step_search).

Fitness on calibration noise only (seed 30_000 + seed, apart from the benchmark's evaluation noise); the
benchmark job reads the file (``flowrepro benchmark --schedules``) and scores the schedules on held-out noise.
The seeds are the benchmark's (the scale's, raised to the experiment's min_seeds).
"""
from __future__ import annotations

import time

from flowrepro.config import benchmark_seeds, load_experiment, load_scale


def run(experiment_file: str, scale_file: str, out: str) -> None:
    import torch

    from flowrepro.samplers import step_search

    experiment, scale = load_experiment(experiment_file), load_scale(scale_file)
    if not experiment.get("search"):
        raise SystemExit(f"search: {experiment_file} has no search: section")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(scale.get("samplers", {}).get("threads", 1)))  # many tiny ops: one thread
    start = time.perf_counter()
    try:
        entries = step_search.run_searches(experiment, benchmark_seeds(experiment, scale))
    finally:
        torch.set_num_threads(threads)
    step_search.write_schedules(out, entries)
    for entry in entries:
        print("searched schedule:", step_search.describe(entry))
    print(f"search: {len(entries)} schedules in {time.perf_counter() - start:.1f} s; wrote {out}")
