"""Maximum mean discrepancy with a Gaussian kernel at the median-distance bandwidth."""
from __future__ import annotations

from typing import Any

import numpy as np

from flowrepro.registry import METRICS


@METRICS.register("mmd")
def mmd_rbf(x: Any, y: Any, max_points: int | None = None, seed: int = 0) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a - b|^2 / (2 h^2)), h = median distance within y.

    MMD^2_u = sum_{i != i'} k(x_i, x_i') / (n (n-1)) + sum_{j != j'} k(y_j, y_j') / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m).

    The cost is O((n + m)^2): m^2 distances for the median, and three kernel matrices.
    ``max_points`` caps it: a set larger than that is replaced by a fixed random subset of
    ``max_points`` points (drawn with ``seed``, without replacement). A subset of an i.i.d. sample
    is an i.i.d. sample, so the estimate stays unbiased for the same MMD^2 (bandwidth taken from
    the subset of y); only its variance grows to that of ``max_points`` points. None (the
    default, the samplers harness's) uses every point.
    """
    import torch

    x, y = _subset(x, max_points, seed), _subset(y, max_points, seed)
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    dyy = torch.cdist(y, y)
    h = _lower_median(dyy[dyy > 0])
    k = lambda d: torch.exp(-d**2 / (2 * h * h))  # noqa: E731
    n, m = len(x), len(y)
    kxx, kyy = k(torch.cdist(x, x)), k(dyy)
    return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * k(torch.cdist(x, y)).mean())


def _subset(x: Any, max_points: int | None, seed: int) -> Any:
    """``x`` itself, or ``max_points`` of its rows chosen at random (fixed ``seed``) when it has more."""
    if max_points is None or len(x) <= max_points:
        return x
    index = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    return x[index]


def _lower_median(values) -> float:
    """``float(values.median())`` for a 1-D CPU tensor (the lower of the two middle values when
    the count is even), by ``np.partition``: O(n) instead of a sort, 6x faster at 10^6 values."""
    array = values.detach().cpu().numpy()
    middle = (array.size - 1) // 2
    return float(np.partition(array, middle)[middle])
