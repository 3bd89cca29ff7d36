"""The benchmarks keep running (their numbers are read from their output, not asserted here)."""
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_sample_memory_benchmark_prints_the_growth_ratio(capsys):
    run = subprocess.run([sys.executable, "benchmarks/sample_memory.py", "--counts", "64", "256", "--batch", "32"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sample: memory beyond the outputs at 256 / at 64 samples = " in run.stdout
    assert "evaluate: memory beyond the outputs at 256 / at 64 samples = " in run.stdout
    with capsys.disabled():
        print("\n" + run.stdout)
