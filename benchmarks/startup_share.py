"""Share of the default workflow's job time spent in process start-up and imports.

Run after `snakemake --cores 2` (it reads logs/benchmarks/**/*.tsv, Snakemake's per-job timings):

    python benchmarks/startup_share.py

Start-up per job is measured here, side by side: a fresh interpreter that imports what every
stage imports (flowrepro's CLI, torch, numpy, pandas), best of 5. Target: under 20%.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


def startup_seconds(repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import flowrepro.cli, torch, numpy, pandas"], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(root: str = "logs/benchmarks") -> None:
    files = sorted(Path(root).rglob("*.tsv"))
    if not files:
        raise SystemExit(f"{root}: no Snakemake benchmark files; run `snakemake --cores 2` first")
    job_seconds = pd.Series({str(f.relative_to(root)): pd.read_csv(f, sep="\t")["s"].iloc[-1] for f in files})
    per_job = startup_seconds()
    share = per_job * len(job_seconds) / job_seconds.sum()
    print(job_seconds.round(2).to_string())
    print(f"jobs: {len(job_seconds)}, summed job time: {job_seconds.sum():.1f} s, start-up per job: {per_job:.2f} s")
    print(f"start-up share of job time: {share:.1%} (target < 20%)")


if __name__ == "__main__":
    main(*sys.argv[1:])
