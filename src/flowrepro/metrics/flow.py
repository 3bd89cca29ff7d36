"""Properties of a flow's trajectories: straightness and transport cost."""
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


def transport_cost(trajectory: np.ndarray) -> float:
    """E |x_1 - x_0|^2 of the coupling the flow defines."""
    flat = trajectory.reshape(trajectory.shape[0], trajectory.shape[1], -1).astype(np.float64)
    return float(((flat[-1] - flat[0]) ** 2).sum(-1).mean())
