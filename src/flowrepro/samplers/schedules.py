"""Time grids 0 = t_0 < ... < t_K = 1 for fixed-step flow solvers."""
from __future__ import annotations

import numpy as np

from flowrepro.registry import SCHEDULES


@SCHEDULES.register("uniform")
def uniform(steps: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, steps + 1)
