"""ODE solvers for dx/dt = v(x, t) from t=0 (noise) to t=1 (data).

Fixed-step solvers take a grid 0 = t_0 < ... < t_K = 1 and cost, per step:
Euler 1 call, midpoint 2, Heun 2 (1 on a last step to t=1 is not special-cased), RK4 4.
``dopri5`` is adaptive (torchdiffeq); its cost is whatever the error control needs, so callers
wrap the model in :class:`~flowrepro.samplers.nfe.NFECounter` and report the count.
"""
from __future__ import annotations

from typing import Callable

from flowrepro.registry import SAMPLERS

#: Model calls per step of each fixed-step solver, to turn an NFE budget into steps.
CALLS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def _step_euler(v, x, t, h):
    return x + h * v(x, t)


def _step_midpoint(v, x, t, h):
    return x + h * v(x + 0.5 * h * v(x, t), t + 0.5 * h)


def _step_heun(v, x, t, h):
    d1 = v(x, t)
    d2 = v(x + h * d1, t + h)
    return x + 0.5 * h * (d1 + d2)


def _step_rk4(v, x, t, h):
    k1 = v(x, t)
    k2 = v(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = v(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = v(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPS = {"euler": _step_euler, "midpoint": _step_midpoint, "heun": _step_heun, "rk4": _step_rk4}


def time_vector(x, value: float):
    """The time ``value`` once per row of ``x`` (what a model f(x, t) takes), on its dtype and device."""
    import torch

    return torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)


def integrate_fixed(velocity: Callable, x0, times, method: str = "euler", return_trajectory: bool = False):
    """Integrate from ``times[0]`` to ``times[-1]`` with one ``method`` step per interval."""
    import torch

    step = _STEPS[method]
    x, trajectory = x0, [x0]
    with torch.no_grad():
        for t_now, t_next in zip(times[:-1], times[1:]):
            x = step(velocity, x, time_vector(x, t_now), float(t_next - t_now))
            if return_trajectory:
                trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x


def integrate_dopri5(velocity: Callable, x0, rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive Dormand-Prince 5(4) from t=0 to t=1 via torchdiffeq."""
    import torch
    from torchdiffeq import odeint

    def rhs(t, x):
        return velocity(x, t.expand(x.shape[0]).to(x.dtype))

    with torch.no_grad():
        times = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
        return odeint(rhs, x0, times, method="dopri5", rtol=rtol, atol=atol)[-1]


for _name in _STEPS:
    SAMPLERS.register(_name)(lambda velocity, x0, times, _m=_name, **kw: integrate_fixed(velocity, x0, times, _m, **kw))
SAMPLERS.register("dopri5")(integrate_dopri5)
