"""Distances between sample sets."""
from __future__ import annotations

import numpy as np

from flowrepro.registry import METRICS


@METRICS.register("w2")
def exact_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Exact 2-Wasserstein distance between two empirical measures (POT network simplex).

    W2 = sqrt(min_P sum_ij P_ij |x_i - y_j|^2) over couplings P with uniform marginals.
    A finite sample of the target has W2 > 0 to another: compare against that floor.
    """
    import ot

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    cost = ot.dist(x, y, metric="sqeuclidean")
    a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(ot.emd2(a, b, cost, numItermax=10_000_000)))
