"""An adaptive Dormand-Prince 5(4) solver in torch that exposes its own heuristics.

Used by the neural-ODE problems (:mod:`flowrepro.optim.problems_node`) and the solver-heuristic
regularisers (:mod:`flowrepro.optim.node_regularisers`) of Pal et al. (ICML 2021, 2023).

One step from (t, y) with step h and k_1 = f(t, y) (reused from the previous step: FSAL)::

    Y_i  = y + h sum_{l<i} a_il k_l,  k_i = f(t + c_i h, Y_i)           i = 2..6
    y1   = y + h sum_i b_i k_i          (5th order; Y_7 = y1, k_7 = f(t + h, y1))
    err  = h sum_{i=1..7} (b_i - b*_i) k_i                              (5th minus embedded 4th)

b* defaults to Shampine's embedded weights, as torchdiffeq's dopri5 (``b_err=B_ERR_DP`` gives
Dormand & Prince's own, as OrdinaryDiffEq's DP5).

Per accepted step j the solver records

* ``E_j = || err / (atol + rtol max(|y|, |y1|)) ||_RMS`` (the controller's error ratio, OrdinaryDiffEq's
  ``EEst``; the step is accepted iff E_j <= 1),
* ``h_j`` (a float: step sizes and accept/reject decisions are constants for autograd), and
* ``S_j = ||k_7 - k_6||_RMS / ||Y_7 - Y_6||_RMS``, the Dormand-Prince/Shampine stiffness estimate
  (OrdinaryDiffEq's ``eigen_est``): both stages sit at t + h, so the quotient estimates the
  Lipschitz constant (the dominant Jacobian eigenvalue's modulus) along the step; h_j S_j > 3.3
  means the step is limited by stability rather than accuracy.

Step-size control (Hairer, Norsett & Wanner I, II.4; torchdiffeq's defaults):
``h_new = h * min(ifactor, max(dfactor, safety * E^(-1/5)))`` with the decrease bound dropped
after an accepted step, and the first step from Hairer's ``hinit`` heuristic (2 evaluations).
NFE counts every evaluation: the initial-step heuristic, rejected steps and accepted steps.
E_j and S_j keep their autograd graph (discretise-then-optimise), so a loss can add them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

Func = Callable[[float, torch.Tensor], torch.Tensor]

#: Dormand & Prince (1980) tableau: nodes c, stage coefficients a, 5th-order weights b, 4th-order b*
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
#: Dormand & Prince's own embedded 4th-order weights (OrdinaryDiffEq's DP5, MATLAB's ode45)
B_STAR_DP = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
#: Shampine's (1986) alternative 4th-order weights, which torchdiffeq's dopri5 uses (its ``c_error``)
B_STAR_SHAMPINE = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
#: error weights b - b*: torchdiffeq's by default, so our E_j is the estimate torchdiffeq's controller sees
B_ERR = tuple(b - bs for b, bs in zip(B, B_STAR_SHAMPINE))
B_ERR_DP = tuple(b - bs for b, bs in zip(B, B_STAR_DP))


def rms(x: torch.Tensor) -> torch.Tensor:
    """||x||_RMS = sqrt(mean x^2) over every element (one norm for the whole batch, as torchdiffeq)."""
    return x.pow(2).mean().sqrt()


class SolverDiverged(RuntimeError):
    """The state or step size became non-finite (e.g. NaN parameters): no solution exists to return."""


class CountedFunc:
    """Wraps f(t, y) and counts its evaluations (one batched call = one NFE)."""

    def __init__(self, func: Func) -> None:
        self.func, self.nfe = func, 0

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.func(t, y)


@dataclass
class StepResult:
    """One Dormand-Prince step: the new state, FSAL derivative, raw error vector and heuristics."""

    y1: torch.Tensor
    f1: torch.Tensor  # k_7 = f(t + h, y1): the next step's k_1
    error: torch.Tensor  # err = h sum_i (b_i - b*_i) k_i (torchdiffeq's y1_error)
    error_ratio: torch.Tensor  # E = ||err / (atol + rtol max(|y|, |y1|))||_RMS
    stiffness: torch.Tensor  # S = ||k_7 - k_6|| / ||y1 - Y_6||


def dopri5_step(func: Func, t: float, y: torch.Tensor, f0: torch.Tensor, h: float,
                rtol: float, atol: float, b_err: tuple[float, ...] = B_ERR) -> StepResult:
    """One step of size h from (t, y) with k_1 = f0; 6 evaluations of ``func`` (k_2..k_7)."""
    k = [f0]
    for i in range(1, 6):
        yi = y + h * sum(a * kl for a, kl in zip(A[i], k) if a != 0.0)
        k.append(func(t + C[i] * h, yi))
    y6 = yi  # the stage k_6 was taken at (c_6 = 1)
    y1 = y + h * sum(b * kl for b, kl in zip(B, k) if b != 0.0)
    k.append(func(t + h, y1))
    error = h * sum(e * kl for e, kl in zip(b_err, k) if e != 0.0)
    scale = atol + rtol * torch.maximum(y.abs(), y1.abs())
    ratio = rms(error / scale)
    den = rms(y1 - y6)
    # k_7 - k_6 = 0 when y1 = Y_6 (e.g. f constant): no stiffness information, report 0 as OrdinaryDiffEq does
    stiffness = torch.where(den > 0, rms(k[6] - k[5]) / den.clamp_min(torch.finfo(den.dtype).tiny),
                            torch.zeros_like(den))
    return StepResult(y1, k[6], error, ratio, stiffness)


def initial_step(func: Func, t0: float, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol: float,
                 order: int = 5) -> float:
    """Hairer's ``hinit``: h0 = 0.01 ||y0|| / ||f0||, one Euler probe, h1 = (0.01 / max(d1, d2))^(1/order).

    Norms are RMS scaled by atol + rtol |y0|; one evaluation of ``func`` (f0 is given). Returns
    min(100 h0, h1) as a float (the step size is never differentiated).
    """
    with torch.no_grad():
        scale = atol + rtol * y0.abs()
        d0, d1 = rms(y0 / scale).item(), rms(f0 / scale).item()
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = func(t0 + h0, y0 + h0 * f0)
        d2 = rms((f1 - f0) / scale).item() / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
    return min(100 * h0, h1)


@dataclass
class Dopri5Solution:
    """The end state and, per accepted step j, t_j (start), h_j, E_j, S_j and the states y_j, y_{j+1}."""

    y: torch.Tensor
    nfe: int
    n_rejected: int
    ts: list[float] = field(default_factory=list)  # accepted step start times t_j
    hs: list[float] = field(default_factory=list)
    errors: list[torch.Tensor] = field(default_factory=list)  # E_j (graph kept)
    stiffness: list[torch.Tensor] = field(default_factory=list)  # S_j (graph kept)
    states: list[torch.Tensor] = field(default_factory=list)  # y at t_0, t_1, ..., t_end (len = steps + 1)
    derivs: list[torch.Tensor] = field(default_factory=list)  # f at the same times (FSAL)

    @property
    def n_steps(self) -> int:
        return len(self.hs)

    def state_at(self, t: float) -> torch.Tensor:
        """y(t) by cubic Hermite interpolation on the accepted step containing t (detached, O(h^4))."""
        knots = self.ts + [self.ts[-1] + self.hs[-1]]
        j = max(0, min(len(self.hs) - 1, sum(1 for tk in knots[1:-1] if tk <= t)))
        h = self.hs[j]
        s = (t - knots[j]) / h
        y0, y1 = self.states[j].detach(), self.states[j + 1].detach()
        f0, f1 = self.derivs[j].detach(), self.derivs[j + 1].detach()
        h00, h10 = 2 * s ** 3 - 3 * s ** 2 + 1, s ** 3 - 2 * s ** 2 + s
        h01, h11 = -2 * s ** 3 + 3 * s ** 2, s ** 3 - s ** 2
        return h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1


def dopri5(func: Func, y0: torch.Tensor, t0: float = 0.0, t1: float = 1.0, *, rtol: float = 1e-4,
           atol: float = 1e-4, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2,
           h0: float | None = None, max_steps: int = 10_000, b_err: tuple[float, ...] = B_ERR) -> Dopri5Solution:
    """Integrate dy/dt = func(t, y) from t0 to t1 (> t0) with error control; differentiable in y0
    and in func's parameters. ``max_steps`` bounds accepted + rejected steps (RuntimeError past it);
    a non-finite derivative or step size raises :class:`SolverDiverged`."""
    f = CountedFunc(func)
    fy = f(t0, y0)
    h = initial_step(f, t0, y0, fy, rtol, atol) if h0 is None else float(h0)
    sol = Dopri5Solution(y=y0, nfe=0, n_rejected=0, states=[y0], derivs=[fy])
    t, y, tries = t0, y0, 0
    while t < t1 and (t1 - t) > 1e-12 * max(1.0, abs(t1)):
        tries += 1
        if not (h == h and abs(h) < float("inf")) or not bool(torch.isfinite(fy).all()):
            raise SolverDiverged(f"dopri5: non-finite step size or derivative at t = {t:.6g}")
        if tries > max_steps:
            raise RuntimeError(f"dopri5: more than {max_steps} steps before t = {t1} (at t = {t:.6g}, h = {h:.3g})")
        h_take = min(h, t1 - t)  # land on t1 exactly
        step = dopri5_step(f, t, y, fy, h_take, rtol, atol, b_err)
        ratio = step.error_ratio.item()
        if not ratio == ratio or ratio == float("inf"):  # the step blew up: shrink hard, as a rejection
            h = h_take * dfactor
            sol.n_rejected += 1
            continue
        accept = ratio <= 1.0
        if ratio == 0.0:
            factor = ifactor
        else:
            factor = min(ifactor, max(1.0 if accept else dfactor, safety * ratio ** -0.2))
        if accept:
            sol.ts.append(t)
            sol.hs.append(h_take)
            sol.errors.append(step.error_ratio)
            sol.stiffness.append(step.stiffness)
            t = t1 if h_take == t1 - t else t + h_take
            y, fy = step.y1, step.f1
            sol.states.append(y)
            sol.derivs.append(fy)
        else:
            sol.n_rejected += 1
        h = h_take * factor
    sol.y, sol.nfe = y, f.nfe
    return sol
