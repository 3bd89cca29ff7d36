"""Properties of a flow's trajectories: straightness, arc-chord gap and transport cost.

:func:`straightness` is the measure the papers use: S(Z) of rectified flow (Liu et al., ICLR
2023) and the curvature of Lee, Kim & Ye (2023). It compares the velocity with the mean velocity
x_1 - x_0 at every time, so it is 0 only for a straight line at constant speed and also counts a
straight line traversed at varying speed as curved. :func:`arc_chord_gap` is the speed-free check
of whether each path is a straight line: it is for flows whose paths are straight by construction
but not at constant speed (constant-acceleration flow, x_t = x_0 + (x_1 - x_0)(h t + (1 - h) t^2)),
where S > 0 says nothing about the shape of the path.
"""
from __future__ import annotations

import numpy as np


def straightness(trajectory: np.ndarray, times: np.ndarray) -> float:
    """S = E ∫_0^1 |(x_1 - x_0) - v(x_t, t)|^2 dt along the model's own ODE paths.

    ``trajectory`` (K+1, n, ...) is an Euler solve on ``times``: on each interval the velocity
    used is exactly (x_{k+1} - x_k) / h_k, so no model call is needed. S = 0 for straight paths.
    """
    trajectory = trajectory.reshape(trajectory.shape[0], trajectory.shape[1], -1).astype(np.float64)
    h = np.diff(times)
    displacement = trajectory[-1] - trajectory[0]
    velocities = np.diff(trajectory, axis=0) / h[:, None, None]
    deviation = ((displacement[None] - velocities) ** 2).sum(-1).mean(-1)
    return float((deviation * h).sum())


def arc_chord_gap(trajectory: np.ndarray) -> float:
    """G = E[1 - |x_K - x_0| / L], L = sum_k |x_{k+1} - x_k| the arc length of each sample's polyline.

    ``trajectory`` (K+1, n, ...): the states of n samples on any time grid (times are not needed:
    the measure ignores speed). By the triangle inequality |x_K - x_0| <= L, so G is in [0, 1]: 0
    exactly when every path moves along a straight line in one direction, whatever its speed; a
    semicircle gives 1 - 2/pi; a path that returns to its start gives 1. A sample that does not move
    (L = 0) counts as straight, 0.
    """
    flat = trajectory.reshape(trajectory.shape[0], trajectory.shape[1], -1).astype(np.float64)
    arc = np.linalg.norm(np.diff(flat, axis=0), axis=-1).sum(0)
    chord = np.linalg.norm(flat[-1] - flat[0], axis=-1)
    moving = arc > 0
    # where L = 0 the ratio is 0/0; such a sample is a point, a straight path
    gap = np.where(moving, 1.0 - chord / np.where(moving, arc, 1.0), 0.0)
    return float(np.clip(gap, 0.0, 1.0).mean())  # rounding can put chord a hair above arc


def transport_cost(trajectory: np.ndarray) -> float:
    """E |x_1 - x_0|^2 of the coupling the flow defines."""
    flat = trajectory.reshape(trajectory.shape[0], trajectory.shape[1], -1).astype(np.float64)
    return float(((flat[-1] - flat[0]) ** 2).sum(-1).mean())
