r"""Piecewise rectified flow (PeRFlow, Yan et al., NeurIPS 2024): reflow done online inside K time windows.

Time runs from noise (t = 0) to data (t = 1) and is cut into windows [t_s, t_e) = [k/K, (k+1)/K).
For a training time t in window k:

1. the window start comes from the teacher's own forward marginal, x_{t_s} = a(t_s) x0 + b(t_s) x1
   (``teacher.path``; x0 ~ N(0, I) beside the data x1), so nothing is simulated from pure noise;
2. the teacher's probability-flow ODE is solved from t_s to t_e with ``solving_steps`` Euler steps,
   giving x_{t_e} (for a linear-path velocity teacher an Euler step is exactly a DDIM step, the
   official solver of its eps-teachers);
3. the student regresses, at x_t = x_{t_s} + (t - t_s) u on the segment, onto the window's constant
   velocity u = (x_{t_e} - x_{t_s}) / (t_e - t_s).

With K = 1 this is reflow on pairs (x0, ODE_teacher(x0)) drawn fresh at every step. Sampling takes
one or more Euler steps per window (a uniform grid of K m steps is aligned with the windows).

The student's field jumps at every window boundary: just below t_s it is window k-1's chord, at t_s
window k's. The official UNet tells timestep 750 from 751 through its embedding; a network smooth in
t (our MLP takes t itself) cannot, and splits the difference: measured on moons, the student's
one-step window map was no better than the teacher's in every window but the first, whose start has
no left neighbour. So the student sees its time through :func:`window_time`, which maps each window
[t_s, t_e) onto [t_s, t_s + (1 - gap)(t_e - t_s)): the network's input stays in [0, 1] (the
teacher's weights still fit it at the window starts), and the jump falls in an input interval of
width gap (t_e - t_s) that no time maps to.

Official code (magic-research/piecewise-rectified-flow): ``scripts/perflow_accelerate_sd.py``
sections 6.2-6.4 (window lookup, ``latents_start`` by ``add_noise``, ``solver.solve``, the target
``(latents_end - latents_start) / (t_end - t_start)`` for the velocity parametrisation, plain MSE),
``src/pfode_solver.py`` (``num_steps`` DDIM steps per window) and ``src/scheduler_perflow.py``
(``Time_Windows``). Its training times are rounded to the teacher's 1000 training steps; ours are
continuous, as the teacher here is a continuous-time flow.
"""
from __future__ import annotations

from typing import Callable

from flowrepro.registry import OBJECTIVES


def window_bounds(t, windows: int):
    """(t_s, t_e) of each time's window [k/K, (k+1)/K); t = 1 falls in the last window, and a time within
    1e-6 windows below a boundary (a sampler's grid point in rounding) in the window it starts."""
    import torch

    k = torch.clamp((t * windows + 1e-6).floor(), max=windows - 1)
    return k / windows, (k + 1) / windows


def solve_window(teacher, x, t_start, t_end, steps: int):
    """Euler solve of the teacher's ODE dx/dt = v(x, t) from per-sample t_start to t_end in ``steps`` steps."""
    from flowrepro.generative.paths import per_sample

    h = (t_end - t_start) / steps
    for i in range(steps):
        x = x + per_sample(h, x) * teacher(x, t_start + i * h)
    return x


def window_time(t, windows: int, gap: float):
    """The student network's time input: window [t_s, t_e) squeezed onto [t_s, t_s + (1 - gap)(t_e - t_s))."""
    t_start, _ = window_bounds(t, windows)
    return t_start + (t - t_start) * (1 - gap)


@OBJECTIVES.register("perflow")
def perflow(spec: dict, path, loss_fn: Callable, teacher, windows: int = 4, solving_steps: int = 8,
            gap: float = 0.5) -> Callable:
    """|| v(x_t, t) - (x_{t_e} - x_{t_s}) / (t_e - t_s) || with x_{t_e} from ``solving_steps`` teacher
    Euler steps inside the window of t (K = ``windows``; the official SD-v1.5 run: 4 windows, 8 steps);
    the student reads its time through :func:`window_time` with ``gap`` (0: t itself)."""
    import torch

    from flowrepro.generative.paths import per_sample

    if windows < 1 or solving_steps < 1 or not 0 <= gap < 1:
        raise ValueError(f"perflow: windows ({windows}) and solving_steps ({solving_steps}) must be at least 1, "
                         f"gap ({gap}) in [0, 1)")

    def objective(model, x0, x1, t, target_model=None):
        t_start, t_end = window_bounds(t, windows)
        x_start = teacher.path.sample(x0, x1, t_start)  # the teacher's forward marginal at the window start
        with torch.no_grad():
            x_end = solve_window(teacher, x_start, t_start, t_end, solving_steps)
        target = (x_end - x_start) / per_sample(t_end - t_start, x0)
        x_t = x_start + per_sample(t - t_start, x0) * target
        return loss_fn(model(x_t, t), target)

    return objective


def windowed_network(shape, settings: dict, spec: dict, build_network):
    """The plain network with its time input passed through :func:`window_time` (a forward pre-hook:
    the state dict is the plain network's, so the teacher's weights initialise it)."""
    import torch

    from flowrepro import pieces

    options = pieces.split(spec["objective"])[1]
    windows, gap = options.get("windows", 4), options.get("gap", 0.5)
    network = build_network(shape, settings)
    if gap > 0:
        network.register_forward_pre_hook(
            lambda _module, args: (args[0], window_time(torch.as_tensor(args[1], device=args[0].device), windows, gap), *args[2:]))
    return network


perflow.needs_teacher = True
perflow.network = windowed_network
