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


def test_train_throughput_benchmark_prints_a_finite_ratio():
    """Smoke size on CPU (unet_smoke, batch 4): both loops run and the ratio of their images/s is printed."""
    import math
    import re

    run = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--device", "cpu", "--batch", "4", "--steps", "4",
                          "--warmup-steps", "2", "--sync-every", "2", "--repeats", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ratio = re.search(r"ratio flowrepro / reference = (\S+)", run.stdout)
    assert ratio and math.isfinite(float(ratio.group(1))) and float(ratio.group(1)) > 0, run.stdout
