"""Optimization problems by name (``PROBLEMS``): synthetic ones here, learning ones in
:mod:`flowrepro.optim.problems_learning`.

A problem factory is ``make(seed, **kw) -> Problem``. The runner only ever calls:

* ``problem.loss(t)``: the loss of step ``t`` (1-based; online/minibatch losses depend on t),
* ``problem.project()``: after each optimizer step (projection onto a constraint set),
* ``problem.lr_factor(t)``: multiplies the base lr at step t (``1/sqrt(t)`` for AMSGrad's setting),
* ``problem.evaluate()``: cheap metrics logged along the run (validation split),
* ``problem.summary()``: final metrics (test split); must contain ``select_metric``.

Problems never look at the optimizer: create_graph, lr and seeds are the runner's business.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from flowrepro.registry import PROBLEMS


@dataclass
class Problem:
    """One seeded instance of an optimization problem."""

    name: str
    params: list[Any]
    loss: Callable[[int], Any]
    evaluate: Callable[[], dict[str, float]]
    summary: Callable[[], dict[str, float]]
    select_metric: str = "loss"  # metric the lr sweep picks on
    select_mode: str = "min"  # "min" or "max"
    project: Callable[[], None] = lambda: None
    lr_factor: Callable[[int], float] = lambda t: 1.0
    after_step: Callable[[int], None] = lambda t: None  # bookkeeping, e.g. trajectories
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- AMSGrad
def _online_problem(name: str, seed: int, stochastic: bool, big: float = 1010.0,
                    small: float = -10.0, period: int = 101, p_big: float = 0.01,
                    x0: float = 0.0, decay_lr: bool = True) -> Problem:
    """f_t(x) = big*x on "big" steps, small*x otherwise, x in [-1, 1]; optimum x* = -1.

    Online (Reddi et al. 2018, Sec. 5): big step iff t mod 101 == 1, so a period's
    gradients sum to 1010 - 100*10 = 10 > 0. Stochastic: big with probability 0.01,
    E[g] = 0.01*1010 - 0.99*10 = 0.2 > 0. Both are minimised over [-1, 1] at x = -1.
    Metrics: ``final_x`` = mean of x over the last ``period`` steps (phase-independent:
    x oscillates within each period), ``last_x`` = x_T, and
    ``avg_regret`` = (1/T) sum_t f_t(x_t) - min_x (1/T) sum_t f_t(x) = (1/T) sum_t c_t (x_t + 1).
    """
    import torch

    x = torch.full((1,), float(x0), requires_grad=True)
    gen = torch.Generator().manual_seed(seed)
    state = {"regret": 0.0, "t": 0, "coef": 0.0, "recent": []}

    def coefficient(t: int) -> float:
        if stochastic:
            return big if torch.rand((), generator=gen).item() < p_big else small
        return big if t % period == 1 else small

    def loss(t: int) -> Any:
        c = coefficient(t)
        state["coef"], state["t"] = c, t
        state["regret"] += c * (x.item() + 1.0)  # regret against the comparator x* = -1
        return c * x.sum()

    def project() -> None:
        with torch.no_grad():
            x.clamp_(-1.0, 1.0)

    def after_step(t: int) -> None:
        recent = state["recent"]
        recent.append(x.item())
        if len(recent) > period:
            recent.pop(0)

    def evaluate() -> dict[str, float]:
        return {"x": x.item(), "avg_regret": state["regret"] / max(state["t"], 1)}

    def summary() -> dict[str, float]:
        recent = state["recent"] or [x.item()]
        return {"final_x": sum(recent) / len(recent), "last_x": x.item(),
                "avg_regret": state["regret"] / max(state["t"], 1)}

    return Problem(name, [x], loss, evaluate, summary, select_metric="avg_regret",
                   project=project, after_step=after_step,
                   lr_factor=(lambda t: 1.0 / math.sqrt(t)) if decay_lr else (lambda t: 1.0))


@PROBLEMS.register("amsgrad_online")
def amsgrad_online(seed: int, **kw: Any) -> Problem:
    """Reddi et al.'s online convex counterexample (deterministic; seed unused)."""
    return _online_problem("amsgrad_online", seed, stochastic=False, **kw)


@PROBLEMS.register("amsgrad_stochastic")
def amsgrad_stochastic(seed: int, **kw: Any) -> Problem:
    """Stochastic version: f = 1010x with probability 0.01, else -10x."""
    return _online_problem("amsgrad_stochastic", seed, stochastic=True, **kw)


# --------------------------------------------------------------------------- diffGrad 1-D
def _diffgrad_f(which: int, x: Any) -> Any:
    """The three 1-D non-convex functions of Dubey et al. 2019 (diffGrad, Sec. IV-A).

    F1(x) = (x + 0.3)^2 for x <= 0;  (x - 0.2)^2 + 0.05 for x > 0
            (global minimum x = -0.3, local minimum x = 0.2)
    F2(x) = -40x - 35.15 for x <= -0.9;  x^3 + x sin(8x) + 0.85 for x > -0.9
            (several local minima; the global one on [-0.9, 1] near x = -0.2)
    F3(x) = x^2 (x <= -0.5); 0.75 + x (-0.5 < x <= -0.4); -7x/8 (-0.4 < x <= 0);
            7x/8 (0 < x <= 0.4); 0.75 - x (0.4 < x <= 0.5); x^2 (x > 0.5)
            (global minimum x = 0 inside a narrow valley, flat-ish shoulders)
    The authors' notebook (github.com/shivram1987/diffGrad) starts at x0 = -1 and uses
    lr 0.1, betas (0.95, 0.999), 300 iterations. It feeds F2 the gradient
    x cos 8x + sin 8x + 3x^2 (not the exact 8x cos 8x + sin 8x + 3x^2); we use autograd
    of F2 as written in the paper.
    """
    import torch

    if which == 1:
        return torch.where(x <= 0, (x + 0.3) ** 2, (x - 0.2) ** 2 + 0.05)
    if which == 2:
        return torch.where(x <= -0.9, -40 * x - 35.15, x ** 3 + x * torch.sin(8 * x) + 0.85)
    if which == 3:
        return torch.where(x <= -0.5, x ** 2, torch.where(x <= -0.4, 0.75 + x, torch.where(
            x <= 0, -7 * x / 8, torch.where(x <= 0.4, 7 * x / 8, torch.where(
                x <= 0.5, 0.75 - x, x ** 2)))))
    raise ValueError(f"diffGrad function F{which}: only F1, F2, F3 exist")


#: global minimisers (numerically, for F2) of the three functions on [-1, 1]
DIFFGRAD_OPTIMA = {1: -0.3, 2: None, 3: 0.0}


#: steps at the end of a diffGrad run over which the oscillation around the minimiser is measured
OSCILLATION_TAIL = 100


def _diffgrad_problem(which: int, seed: int, x0: float = -1.0) -> Problem:
    """One 1-D run; besides the gap, how x oscillates around the minimiser x* over the last
    ``OSCILLATION_TAIL`` steps: ``osc_amplitude`` = max |x_t - x*| and ``osc_crossings`` = how many
    times x_t - x* changes sign (the amplitude and frequency of Fig. 3's discussion)."""
    import torch

    x = torch.full((1,), float(x0), requires_grad=True)
    grid = torch.linspace(-1.0, 1.0, 20001)
    values = _diffgrad_f(which, grid)
    f_star, x_star = values.min().item(), grid[values.argmin()].item()  # global minimum on [-1, 1], by grid
    tail: list[float] = []

    def loss(t: int) -> Any:
        return _diffgrad_f(which, x).sum()

    def after_step(t: int) -> None:
        tail.append(x.item() - x_star)
        if len(tail) > OSCILLATION_TAIL:
            tail.pop(0)

    def oscillation() -> dict[str, float]:
        crossings = sum(1 for a, b in zip(tail[:-1], tail[1:]) if a * b < 0)
        return {"osc_amplitude": max((abs(d) for d in tail), default=0.0), "osc_crossings": float(crossings)}

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {"loss": _diffgrad_f(which, x).item(), "x": x.item()}

    def summary() -> dict[str, float]:
        metrics = evaluate()
        return {"final_loss": metrics["loss"], "final_x": metrics["x"],
                "final_gap": metrics["loss"] - f_star, "loss": metrics["loss"], **oscillation()}

    return Problem(f"diffgrad_f{which}", [x], loss, evaluate, summary, select_metric="loss", after_step=after_step)


for _which in (1, 2, 3):
    PROBLEMS.register(f"diffgrad_f{_which}")(
        lambda seed, _w=_which, **kw: _diffgrad_problem(_w, seed, **kw))


# --------------------------------------------------------------------------- 2-D test functions
def _cos(x: Any) -> Any:
    """cos for a torch tensor or a numpy array (the surfaces are drawn with numpy)."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch.cos(x)
    import numpy as np

    return np.cos(x)


def rosenbrock(xy: Any, a: float = 1.0, b: float = 100.0) -> Any:
    """f(x, y) = (a - x)^2 + b (y - x^2)^2; minimum 0 at (a, a^2).

    ``xy[0]``, ``xy[1]`` may be scalars (the problem) or grids (the contour plot).
    """
    return (a - xy[0]) ** 2 + b * (xy[1] - xy[0] ** 2) ** 2


def rastrigin(xy: Any, a: float = 10.0) -> Any:
    """f(x, y) = 2a + sum_i (x_i^2 - a cos(2 pi x_i)); minimum 0 at the origin, a local minimum
    near every integer point. ``xy[0]``, ``xy[1]`` may be scalars or grids."""
    return sum(a + xi ** 2 - a * _cos(2 * math.pi * xi) for xi in (xy[0], xy[1]))


#: name -> (function, global minimiser, plot box (xmin, xmax, ymin, ymax)); the problems and the
#: trajectory figures both read this table.
SURFACES: dict[str, tuple[Callable[[Any], Any], tuple[float, float], tuple[float, float, float, float]]] = {
    "rosenbrock": (rosenbrock, (1.0, 1.0), (-2.0, 2.0, -1.0, 3.0)),
    "rastrigin": (rastrigin, (0.0, 0.0), (-3.0, 3.0, -3.0, 3.0)),
}


def _surface_problem(name: str, start: tuple[float, float], seed: int, jitter: float = 0.1) -> Problem:
    """Minimise a 2-D function of :data:`SURFACES` from ``start`` (+ seeded jitter).

    ``info["trajectory"]`` holds every iterate (start included): the trajectory figures.
    """
    import torch

    fn, optimum, _ = SURFACES[name]
    gen = torch.Generator().manual_seed(seed)
    xy = (torch.tensor(start) + jitter * torch.randn(2, generator=gen)).requires_grad_(True)
    trajectory: list[tuple[float, float]] = [tuple(xy.tolist())]
    opt = torch.tensor(optimum)

    def loss(t: int) -> Any:
        return fn(xy)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {"loss": fn(xy).item(), "x": xy[0].item(), "y": xy[1].item()}

    def summary() -> dict[str, float]:
        metrics = evaluate()
        with torch.no_grad():
            dist = (xy - opt).norm().item()
        return {"final_loss": metrics["loss"], "dist_to_opt": dist, "loss": metrics["loss"]}

    def after_step(t: int) -> None:
        trajectory.append(tuple(xy.tolist()))

    return Problem(name, [xy], loss, evaluate, summary, select_metric="loss",
                   after_step=after_step, info={"trajectory": trajectory})


@PROBLEMS.register("rosenbrock")
def rosenbrock_problem(seed: int, start: tuple[float, float] = (-1.5, 2.0), **kw: Any) -> Problem:
    return _surface_problem("rosenbrock", tuple(start), seed, **kw)


@PROBLEMS.register("rastrigin")
def rastrigin_problem(seed: int, start: tuple[float, float] = (2.2, -2.3), **kw: Any) -> Problem:
    return _surface_problem("rastrigin", tuple(start), seed, **kw)


def quadratic(seed: int, dim: int = 10, cond: float = 10.0) -> Problem:
    """f(x) = 1/2 sum_i h_i x_i^2 with h log-spaced in [1, cond]; used by the tests."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    h = torch.logspace(0, math.log10(cond), dim)
    x = torch.randn(dim, generator=gen).requires_grad_(True)

    def loss(t: int) -> Any:
        return 0.5 * (h * x ** 2).sum()

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {"loss": loss(0).item()}

    return Problem("quadratic", [x], loss, evaluate, evaluate, info={"hessian_diag": h})


PROBLEMS.register("quadratic")(quadratic)
