"""Training objectives: what a flow network regresses on, given a coupled batch (x0, x1).

- ``regression``: || net(x_t, t) - target ||, the target being the path's conditional velocity
  u_t = a'(t) x0 + b'(t) x1 (``prediction: velocity``, flow matching) or the noise x0
  (``prediction: epsilon``, the denoising loss of score SDEs).
- ``velocity_consistency`` (Consistency Flow Matching, Yang et al. 2024, Eq. 6 with K segments):
  on segment [s_i, s_{i+1}) the network defines f(x, t) = x + (s_{i+1} - t) v(x, t), the point it
  predicts at the segment's end, and is trained for self-consistency along the straight path:

      || f_theta(x_t, t) - f_theta-(x_{t+dt}, t+dt) ||^2 + alpha || v_theta(x_t, t) - v_theta-(x_{t+dt}, t+dt) ||^2

  with x_t, x_{t+dt} on the same linear interpolation and theta- the same network's current weights
  without gradient, as the official code (YangLing0818/consistency_flow_matching losses.py; its
  sde_lib.ConsistencyFM fixes delta 1e-3, 2 segments, alpha 1e-5). The paper's text suggests an EMA
  target; the code does not use one, and on digits the EMA target (decay 0.99) kept samples at
  noise after 400 steps (FID 247) where the online target reached 58.
- ``distill`` (rectified flow, Liu et al. 2023, Sec. 2.3): one-step distillation on pairs (x0, x1) of a
  k-rectified flow's ODE: || net(x0, 0) - (x1 - x0) ||, so that x0 + v(x0, 0) lands on x1 in one Euler
  step. Only t = 0 is trained; the sampled t is ignored.
"""
from __future__ import annotations

from typing import Callable

from flowrepro import pieces


def regression(path, loss_fn: Callable, prediction: str = "velocity") -> Callable:
    if prediction not in ("velocity", "epsilon"):
        raise ValueError(f"prediction must be 'velocity' or 'epsilon', not {prediction!r}")

    def objective(model, x0, x1, t, target_model=None):
        xt = path.sample(x0, x1, t)
        target = path.velocity(x0, x1, t) if prediction == "velocity" else x0
        return loss_fn(model(xt, t), target)

    return objective


def velocity_consistency(path, segments: int = 2, delta: float = 1e-3, alpha: float = 1e-5) -> Callable:
    import torch

    from flowrepro.generative.paths import per_sample

    def objective(model, x0, x1, t, target_model=None):
        segment = torch.clamp((t * segments).long(), max=segments - 1)
        start, end = segment / segments, (segment + 1) / segments
        t = start + (t * segments - segment) * (end - start - delta)  # both t and t+dt inside one segment
        r = t + delta
        xt, xr = path.sample(x0, x1, t), path.sample(x0, x1, r)
        vt = model(xt, t)
        with torch.no_grad():  # the online network as its own target (``target_model``, an EMA copy, is unused)
            vr = model(xr, r)
        ft = xt + per_sample(end - t, x0) * vt
        fr = xr + per_sample(end - r, x0) * vr
        return ((ft - fr) ** 2).flatten(1).sum(1).mean() + alpha * ((vt - vr) ** 2).flatten(1).sum(1).mean()

    return objective


def distill(loss_fn: Callable) -> Callable:
    import torch

    def objective(model, x0, x1, t, target_model=None):
        return loss_fn(model(x0, torch.zeros_like(t)), x1 - x0)

    return objective


def build_objective(spec: dict, path, loss_fn: Callable) -> Callable:
    """The objective a model spec names (``objective:``, default regression)."""
    name = spec.get("objective", "regression")
    if name == "regression":
        return regression(path, loss_fn, spec.get("prediction", "velocity"))
    if name == "velocity_consistency":
        return velocity_consistency(path, spec.get("segments", 2), spec.get("delta", 1e-3))
    if name == "distill":
        if pieces.name_of(spec.get("coupling", "independent")) != "reflow":
            raise ValueError("objective distill needs coupling: reflow (the pairs of the model it distils)")
        return distill(loss_fn)
    raise ValueError(f"unknown objective {name!r}; known: regression, velocity_consistency, distill")
