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

Objectives are pieces (``objective: name`` or ``{name: ..., <option>: ...}``) registered in
``OBJECTIVES``; a builder is called as ``f(spec, path, loss_fn, teacher, **options)`` and returns
``objective(model, x0, x1, t, target_model) -> loss``. ``teacher`` is the frozen sampling model of
the spec's ``teacher:`` (one per seed; None without one). A builder may carry two hooks, as a
sampler carries ``calls_per_step``: ``network(shape, settings, spec, build_network)``, the module
trained when it is not one flow network (``build_network(shape, settings)`` builds a plain one),
and ``field(network, path, spec)``, what samplers call on it (default: the velocity field).
"""

from __future__ import annotations

from typing import Callable

from flowrepro import pieces
from flowrepro.registry import OBJECTIVES


@OBJECTIVES.register("regression")
def regression(spec: dict, path, loss_fn: Callable, teacher, loss_on: str = "prediction") -> Callable:
    """|| net(x_t, t) - target ||: the path's velocity, or the noise x0 (``prediction: epsilon``);
    ``loss_on: data`` compares an eps-network's data estimate (x_t - a eps_hat) / b with x1 instead
    (Rectified Diffusion's loss on ``predicted_origin``: it weights eps errors by a / b, most at the noise end)."""
    from flowrepro.generative.paths import per_sample

    prediction = spec.get("prediction", "velocity")
    if prediction not in ("velocity", "epsilon"):
        raise ValueError(f"prediction must be 'velocity' or 'epsilon', not {prediction!r}")
    if loss_on not in ("prediction", "data") or (loss_on == "data" and prediction != "epsilon"):
        raise ValueError(f"loss_on must be 'prediction', or 'data' with prediction: epsilon; not {loss_on!r} with {prediction!r}")

    def objective(model, x0, x1, t, target_model=None):
        xt = path.sample(x0, x1, t)
        if loss_on == "data":
            a, b, _, _ = (per_sample(c, x1) for c in path.coefficients(t))
            return loss_fn((xt - a * model(xt, t)) / b, x1)
        target = path.velocity(x0, x1, t) if prediction == "velocity" else x0
        return loss_fn(model(xt, t), target)

    return objective


@OBJECTIVES.register("velocity_consistency")
def velocity_consistency(spec: dict, path, loss_fn: Callable, teacher, alpha: float = 1e-5) -> Callable:
    """Consistency-FM's loss on ``segments`` segments with time offset ``delta`` (the spec's keys)."""
    import torch

    from flowrepro.generative.paths import per_sample

    segments, delta = spec.get("segments", 2), spec.get("delta", 1e-3)

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


@OBJECTIVES.register("distill")
def distill(spec: dict, path, loss_fn: Callable, teacher) -> Callable:
    """|| net(x0, 0) - (x1 - x0) || on reflow pairs: one Euler step from x0 lands on x1."""
    import torch

    if pieces.name_of(spec.get("coupling", "independent")) != "reflow":
        raise ValueError("objective distill needs coupling: reflow (the pairs of the model it distils)")

    def objective(model, x0, x1, t, target_model=None):
        return loss_fn(model(x0, torch.zeros_like(t)), x1 - x0)

    return objective


def objective_piece(spec: dict):
    """The registered builder a model spec's ``objective:`` names (default regression), hooks and all
    (the modules of ``pieces.BUILTINS["objective"]`` register the built-in ones)."""
    return pieces.table("objective").get(pieces.name_of(spec.get("objective", "regression")))


def build_objective(spec: dict, path, loss_fn: Callable, teacher=None) -> Callable:
    """The objective a model spec names, with its options bound (:mod:`flowrepro.pieces`)."""
    builder = pieces.build("objective", spec.get("objective", "regression"))
    if getattr(builder, "needs_teacher", False) and teacher is None:
        raise ValueError(f"objective {pieces.name_of(spec['objective'])!r} needs a teacher: model (teacher: <model name>)")
    return builder(spec, path, loss_fn, teacher)
