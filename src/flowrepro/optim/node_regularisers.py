"""Solver-heuristic regularisers for neural ODEs (Pal et al. 2021, 2023), on :func:`.dopri5.dopri5`.

Global (Opening the Blackbox, ICML 2021), over the accepted steps j of the training solve,
differentiated through the whole solve (discretise-then-optimise; h_j are constants)::

    R_E = sum_j E_j |h_j|        (global_error)
    R_S = sum_j S_j |h_j|        (global_stiffness)

with E_j the controller's scaled error ratio and S_j the stiffness estimate (see :mod:`.dopri5`).

Local (Locally Regularized NDEs, ICML 2023): after the ordinary solve, pick one time t*, take
u(t*) as a constant, start a fresh integrator at (t*, u(t*)) on [t*, t_end] (first step h* from the
initial-step heuristic) and add the error of that single step::

    R_local = E(t*, u(t*), h*) h*

``local_error_unbiased``: t* ~ U[t0, t_end] (u(t*) from the solve's dense output);
``local_error_biased``: t* drawn uniformly from the accepted step start times t_j (the solver
already concentrates its steps where the dynamics are hard, hence "biased").
Only the parameters of f are differentiated through the local step (the official code marks the
integrator construction non-differentiable). Each regulariser returns (value, extra NFE).
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from flowrepro.optim.dopri5 import CountedFunc, Dopri5Solution, Func, dopri5_step, initial_step


def global_error(sol: Dopri5Solution) -> torch.Tensor:
    """R_E = sum_j E_j |h_j| over the accepted steps."""
    return sum(e * abs(h) for e, h in zip(sol.errors, sol.hs))


def global_stiffness(sol: Dopri5Solution) -> torch.Tensor:
    """R_S = sum_j S_j |h_j| over the accepted steps."""
    return sum(s * abs(h) for s, h in zip(sol.stiffness, sol.hs))


def local_step_error(func: Func, t: float, u: torch.Tensor, t_end: float, rtol: float,
                     atol: float) -> tuple[torch.Tensor, int]:
    """E h of one fresh-integrator step from (t, u) towards t_end; returns (value, NFE used).

    u is detached (a constant start); the step size is the initial-step heuristic's, capped at t_end - t.
    """
    f = CountedFunc(func)
    u = u.detach()
    f0 = f(t, u)
    h = min(initial_step(f, t, u, f0, rtol, atol), t_end - t)
    step = dopri5_step(f, t, u, f0, h, rtol, atol)
    return step.error_ratio * h, f.nfe


def local_error_unbiased(func: Func, sol: Dopri5Solution, t0: float, t_end: float, rtol: float,
                         atol: float, rng: random.Random) -> tuple[torch.Tensor, int]:
    """R at t* ~ U[t0, t_end) (u(t*) interpolated from the accepted steps)."""
    t = t0 + rng.random() * (t_end - t0)
    t = min(t, t_end - 1e-6 * (t_end - t0))  # keep a non-empty span for the fresh step
    return local_step_error(func, t, sol.state_at(t), t_end, rtol, atol)


def local_error_biased(func: Func, sol: Dopri5Solution, t0: float, t_end: float, rtol: float,
                       atol: float, rng: random.Random) -> tuple[torch.Tensor, int]:
    """R at t* drawn uniformly from the accepted step start times (u(t*) = the solver's state there)."""
    j = rng.randrange(sol.n_steps)
    return local_step_error(func, sol.ts[j], sol.states[j], t_end, rtol, atol)


#: name -> regulariser; "none" adds nothing
REGULARISERS: dict[str, Callable[..., tuple[torch.Tensor, int]]] = {
    "global_error": lambda func, sol, *a, **k: (global_error(sol), 0),
    "global_stiffness": lambda func, sol, *a, **k: (global_stiffness(sol), 0),
    "local_error_unbiased": local_error_unbiased,
    "local_error_biased": local_error_biased,
}


def regularise(name: str, func: Func, sol: Dopri5Solution, t0: float, t_end: float, rtol: float,
               atol: float, rng: random.Random) -> tuple[torch.Tensor | float, int]:
    """(R, extra NFE) of regulariser ``name`` for the solve ``sol`` ("none": (0, 0))."""
    if name == "none":
        return 0.0, 0
    if name not in REGULARISERS:
        raise KeyError(f"unknown regulariser {name!r}; known: none, {', '.join(REGULARISERS)}")
    return REGULARISERS[name](func, sol, t0, t_end, rtol, atol, rng)
