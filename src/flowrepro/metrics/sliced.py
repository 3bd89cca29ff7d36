"""Sliced Wasserstein distance: the mean over random directions of 1-D W2^2, in closed form."""
from __future__ import annotations

import math
from typing import Any

from flowrepro.registry import METRICS


def _as_matrix(x: Any):
    """(n, d) torch tensor: a tensor keeps its dtype (callers' numbers unchanged), arrays become float64."""
    import numpy as np
    import torch

    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    return x.reshape(len(x), -1)


def _mean_w2_squared_1d(pa, pb):
    """Mean over columns of W2^2 between the empirical measures of sorted columns.

    Per column W2^2 = ∫_0^1 (F_a^-1(u) - F_b^-1(u))^2 du. Equal sizes: the mean squared gap of the
    sorted values. Unequal sizes: both quantile functions are constant between consecutive points
    of {i/n} ∪ {j/m}, so the integral is an exact weighted sum over those pieces.
    """
    import torch

    n, m = len(pa), len(pb)
    if n == m:
        return ((pa - pb) ** 2).mean()
    breaks = torch.unique(torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                                     torch.arange(1, m + 1, dtype=torch.float64) / m]))
    widths = torch.diff(breaks, prepend=breaks.new_zeros(1))
    middle = breaks - widths / 2  # inside each piece, away from the jumps
    ia = (middle * n).long().clamp_max(n - 1)
    ib = (middle * m).long().clamp_max(m - 1)
    return (widths.to(pa.dtype)[:, None] * (pa[ia] - pb[ib]) ** 2).sum(0).mean()


@METRICS.register("sliced_w2")
def sliced_wasserstein(a: Any, b: Any, n_projections: int = 128, seed: int = 0) -> float:
    """SW_2(a, b) = sqrt(E_theta W_2^2(<a, theta>, <b, theta>)), theta uniform on the sphere.

    The expectation is a Monte Carlo mean over ``n_projections`` directions drawn with ``seed``
    (fixed, so the number is deterministic). For equal sample sizes the 1-D W_2^2 is the mean
    squared gap of the sorted projections. A translation by m gives SW_2 = |m| / sqrt(d) in
    expectation over theta (E (theta . m)^2 = |m|^2 / d). Inputs: torch tensors (their dtype is
    kept) or arrays (float64), flattened to (n, d).
    """
    import torch

    a, b = _as_matrix(a), _as_matrix(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], n_projections, generator=gen)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(dtype)  # drawn in float32 whatever the inputs: same directions
    pa, pb = _sorted_columns(a.to(dtype) @ theta), _sorted_columns(b.to(dtype) @ theta)
    return math.sqrt(_mean_w2_squared_1d(pa, pb).item())


def _sorted_columns(x):
    """Each column of a CPU tensor sorted ascending: the same values as ``torch.sort(x, dim=0)``.

    NumPy's SIMD sort is about 10x faster than torch's on CPU (2,000 x 128 float32: 1.2 vs 13 ms),
    and sliced W2 sorts in every validation step of the optimizer benchmarks.
    """
    import numpy as np
    import torch

    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):  # NumPy has no bfloat16
        return torch.sort(x, dim=0).values
    return torch.from_numpy(np.sort(x.detach().numpy(), axis=0))
