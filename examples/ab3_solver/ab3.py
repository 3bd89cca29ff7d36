"""A third-order Adams-Bashforth flow solver, added from outside the package.

The experiment file beside this module lists it under ``plugins: [ab3.py]``; every stage imports
it before it looks up a sampler, so ``sampling: {ab3: {nfe: [...]}}`` finds it by name.

Adams-Bashforth methods reuse the velocities of earlier steps instead of evaluating the model
again inside a step, so every step costs one model call whatever the order. On a uniform grid
with step h and f_k = v(x_k, t_k), AB3 is::

    x_{n+1} = x_n + h * (23 f_n - 16 f_{n-1} + 5 f_{n-2}) / 12

The first step has no history and is an Euler step (AB1, x_1 = x_0 + h f_0); the second is AB2,
x_2 = x_1 + h (3 f_1 - f_0) / 2; AB3 from the third step on. Each step costs one model call, so
K steps cost exactly K calls (``calls_per_step = 1``, read by the sample stage to turn an NFE
budget into steps). The price of a one-call start: the Euler step's O(h^2) local error stays in
the result, so on a uniform grid the global error is O(h^2) (with a much smaller constant than
Euler's O(h)), and third order shows only on grids whose first steps are short. On a non-uniform grid (any schedule) the weights are the exact integrals over
[t_n, t_{n+1}] of the Lagrange polynomials through the last three (t_k, f_k), which reduce to
(23, -16, 5) / 12 h when the steps are equal.
"""
from __future__ import annotations

import numpy as np

from flowrepro.registry import SAMPLERS

ORDER = 3


def ab_weights(nodes: list[float], t_now: float, t_next: float) -> list[float]:
    """Weights w_j with x_{n+1} = x_n + sum_j w_j f(t_j): the integrals over [t_now, t_next] of
    the Lagrange basis polynomials through ``nodes`` (most recent first)."""
    weights = []
    for j, t_j in enumerate(nodes):
        others = [t_k for k, t_k in enumerate(nodes) if k != j]
        basis = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
        basis = basis / float(np.prod([t_j - t_k for t_k in others]))
        antiderivative = basis.integ()
        weights.append(float(antiderivative(t_next) - antiderivative(t_now)))
    return weights


@SAMPLERS.register("ab3")
def ab3(velocity, x0, times, return_trajectory: bool = False, **kw):
    """Integrate dx/dt = velocity(x, t) over ``times`` with AB3 (AB1, AB2 for the first two steps)."""
    import torch

    times = [float(t) for t in times]
    x, trajectory, history = x0, [x0], []  # history: (t_k, f_k), most recent first
    with torch.no_grad():
        for t_now, t_next in zip(times[:-1], times[1:]):
            t = torch.full((x.shape[0],), t_now, dtype=x.dtype, device=x.device)
            history = [(t_now, velocity(x, t))] + history[: ORDER - 1]  # the step's one model call
            weights = ab_weights([t_k for t_k, _ in history], t_now, t_next)
            x = x + sum(w * f for w, (_, f) in zip(weights, history))
            if return_trajectory:
                trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


ab3.calls_per_step = 1  # the sample stage reads this to turn an NFE budget into steps
