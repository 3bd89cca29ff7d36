"""Momentum samplers against divergence artifacts: PLMS with heavy ball (HB) and the generalised
heavy ball (GHVB) (Wizadwongsa, Chinchuthakun, Khungurn, Raj, Suwajanakorn, "Diffusion Sampling with
Momentum for Mitigating Divergence Artifacts", ICLR 2024, arXiv:2307.11118; official code
sWizad/momentum-diffusion, ``stable_diffusion/diffusion/momentum_scheduler.py``).

Both work in DDIM's normalised coordinates, y = x / alpha and the VE sigma s = sigma / alpha (the
noise level every sampler here is called with), where the probability-flow ODE is dy/ds = eps(x, s)
and one DDIM step is one Euler step, y' = y + (s' - s) eps. Over the steps n = 0, 1, ... from the
noise level s_0 down to s_N = 0, with h_n = s_{n+1} - s_n and e_n = eps(x_n, s_n) (one model call):

    PLMS (order k):  y_{n+1} = y_n + h_n AB_k(e_n, ..., e_{n-k+1})
    HB   (k, beta):  v_n = (1 - beta) v_{n-1} + beta AB_k(e_n, ...),        y_{n+1} = y_n + h_n v_n
    GHVB (k, beta):  v_n = (1 - beta) v_{n-1} + beta e_n,                   y_{n+1} = y_n + h_n AB_k^beta(v_n, ..., v_{n-k+1})

with v_{-1} = e_0 and, as in the official code, the order raised one step at a time while the
history is short (k_n = min(k, n + 1): the first step is DDIM). AB_k are the constant-coefficient
Adams-Bashforth weights of PLMS (Liu et al., ICLR 2022); AB_k^beta are GHVB's beta-dependent weights
(the paper's Sec. 4.2; the official ``AdamBmixer``), which equal AB_k at beta = 1. Hence

    HB(k, 1) = GHVB(k, 1) = PLMS_k,   and   HB(1, beta) = GHVB(1, beta) (both first order),   PLMS_1 = DDIM.

The paper writes both knobs as one fractional "order": 3.8 is order 4 with beta = 0.8, an integer is
beta = 1 (:func:`split_order`). PLMS here is the official code's PLMS (Adams-Bashforth warm-up, one
model call per step), not diffusers' PNDMScheduler(skip_prk_steps=True), whose second step
re-evaluates the model (one extra call, a pseudo improved-Euler warm-up).
"""
from __future__ import annotations

import math
from collections.abc import Callable

from flowrepro.registry import SAMPLERS

#: Adams-Bashforth weights of PLMS, newest first: AB_k = sum_j W[k][j] e_{n-j}.
AB_WEIGHTS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
    5: (1901 / 720, -2774 / 720, 2616 / 720, -1274 / 720, 251 / 720),
}

#: GHVB's weights as (a_j, b_j, denominator): AB_k^beta = sum_j (a_j + b_j beta) / (den beta) v_{n-j}
#: (arXiv:2307.11118 Sec. 4.2 / the official AdamBmixer); at beta = 1 they reduce to AB_WEIGHTS.
GHVB_WEIGHTS: dict[int, tuple[tuple[tuple[float, float], ...], float]] = {
    1: (((0, 1),), 1),
    2: (((2, 1), (-2, 1)), 2),
    3: (((18, 5), (-24, 8), (6, -1)), 12),
    4: (((46, 9), (-78, 19), (42, -5), (-10, 1)), 24),
    5: (((1650, 251), (-3420, 646), (2880, -264), (-1380, 106), (270, -19)), 720),
}


def split_order(order: float) -> tuple[int, float]:
    """The paper's fractional order -> (integer order k, beta): 3.8 -> (4, 0.8), 2 -> (2, 1.0)."""
    whole, frac = divmod(float(order), 1.0)
    frac = round(frac, 10)  # 3.8 % 1 is 0.7999999999999998
    if frac > 0:
        return int(whole) + 1, frac
    return int(whole), 1.0


def ddim_levels(steps: int) -> list[float]:
    """VE sigmas s_0 > ... > s_N = 0 of DDIM's trailing grid (t = 999 first, final alpha = 1).

    The grid every diffusers scheduler of the harness uses (:func:`flowrepro.samplers.diffusion.run_scheduler`
    with ``timestep_spacing="trailing"``, ``set_alpha_to_one=True``), so errors compare on one grid.
    """
    import numpy as np

    from flowrepro.samplers.diffusion import training_alphas_cumprod

    acp = training_alphas_cumprod()
    timesteps = np.round(np.arange(1000, 0, -1000 / steps)).astype(np.int64) - 1
    return [math.sqrt((1 - float(acp[t])) / float(acp[t])) for t in timesteps] + [0.0]


def _weighted(weights, history):
    """sum_j weights[j] history[-1 - j] (newest first)."""
    total = weights[0] * history[-1]
    for j, w in enumerate(weights[1:], start=1):
        total = total + w * history[-1 - j]
    return total


def adams_bashforth(history: list, order: int):
    """PLMS's combination of the newest min(order, len(history)) model outputs."""
    k = min(order, len(history))
    return _weighted(AB_WEIGHTS[k], history)


def ghvb_combination(history: list, order: int, beta: float):
    """GHVB's beta-dependent combination of the newest min(order, len(history)) velocities."""
    k = min(order, len(history))
    pairs, den = GHVB_WEIGHTS[k]
    return _weighted([(a + b * beta) / (den * beta) for a, b in pairs], history)


def _check(order: int, beta: float, schedule: str) -> None:
    if order not in AB_WEIGHTS:
        raise ValueError(f"order {order}: 1 to {max(AB_WEIGHTS)} supported (the official mixer's range)")
    if not 0 < beta <= 1:
        raise ValueError(f"beta {beta}: must be in (0, 1]")
    if schedule != "uniform":
        raise ValueError(f"schedule {schedule!r}: the momentum samplers run DDIM's trailing (uniform) grid only")


def _multistep(model: Callable, x_t, steps: int, direction: Callable[[object, int], object]):
    """Shared loop: y = x / alpha, y_{n+1} = y_n + h_n direction(e_n, n); returns (VP x, levels)."""
    import torch

    levels = ddim_levels(steps)
    y = x_t * math.sqrt(1 + levels[0] ** 2)  # VP x at s -> y = x sqrt(1 + s^2)
    with torch.no_grad():
        for n in range(steps):
            s, s_next = levels[n], levels[n + 1]
            eps = model(y / math.sqrt(1 + s * s), s)  # the one model call of this step
            y = y + (s_next - s) * direction(eps, n)
    return y / math.sqrt(1 + levels[-1] ** 2), (levels[0], levels[-1])


@SAMPLERS.register("plms_ab")
def plms(model: Callable, x_t, steps: int, schedule: str = "uniform", order: int = 4, **_):
    """PLMS of order k with the Adams-Bashforth warm-up: y_{n+1} = y_n + h_n AB_k(e_n, ..., e_{n-k+1}).

    ``model(x_vp, s)`` is eps at VE sigma s; ``x_t`` VP noise at t = 999. One call per step.
    Returns (x at s = 0, (first level, final level)), like :func:`~flowrepro.samplers.diffusion.run_scheduler`.
    """
    _check(int(order), 1.0, schedule)
    history: list = []

    def direction(eps, n):
        history.append(eps)
        del history[:-int(order)]  # only the newest k outputs are ever used
        return adams_bashforth(history, int(order))

    return _multistep(model, x_t, steps, direction)


@SAMPLERS.register("hb")
def heavy_ball(model: Callable, x_t, steps: int, schedule: str = "uniform", order: float = 3.8, **_):
    """PLMS with Polyak's heavy ball (the paper's "PLMS-HB", Sec. 4.1), fractional ``order`` k - 1 + beta.

        v_n = (1 - beta) v_{n-1} + beta AB_k(e_n, ..., e_{n-k+1}),   v_{-1} = e_0,   y_{n+1} = y_n + h_n v_n.

    beta = 1 is PLMS_k; beta < 1 enlarges the stability region at the price of first-order
    convergence (the paper's Theorem). Default 3.8: PLMS4 with beta 0.8, the paper's setting.
    """
    k, beta = split_order(order)
    _check(k, beta, schedule)
    history: list = []
    state: dict = {}

    def direction(eps, n):
        history.append(eps)
        del history[:-k]
        prime = adams_bashforth(history, k)
        state["v"] = prime if n == 0 else (1 - beta) * state["v"] + beta * prime  # v_{-1} = e_0 = AB(e_0)
        return state["v"]

    return _multistep(model, x_t, steps, direction)


@SAMPLERS.register("ghvb")
def generalized_heavy_ball(model: Callable, x_t, steps: int, schedule: str = "uniform", order: float = 3.8, **_):
    """Generalised heavy ball (the paper's GHVB, Sec. 4.2), fractional ``order`` k - 1 + beta.

        v_n = (1 - beta) v_{n-1} + beta e_n,   v_{-1} = e_0,   y_{n+1} = y_n + h_n AB_k^beta(v_n, ..., v_{n-k+1}).

    Order k in the step size (the paper's Theorem) with tunable damping; beta = 1 is PLMS_k and
    order 1 with beta = 1 is DDIM. Default 3.8 (k = 4, beta = 0.8).
    """
    k, beta = split_order(order)
    _check(k, beta, schedule)
    velocities: list = []

    def direction(eps, n):
        v = eps if n == 0 else (1 - beta) * velocities[-1] + beta * eps
        velocities.append(v)
        del velocities[:-k]
        return ghvb_combination(velocities, k, beta)

    return _multistep(model, x_t, steps, direction)


for _fn in (plms, heavy_ball, generalized_heavy_ball):
    _fn.calls_per_step = 1  # counted model calls per step: what the harness plans an NFE budget with
    _fn.eps_sampler = True  # f(eps, x_t, steps, ...) at VE levels: runs on trained models too (trained_diffusion.is_eps_sampler)

__all__ = ["AB_WEIGHTS", "GHVB_WEIGHTS", "adams_bashforth", "ddim_levels", "generalized_heavy_ball", "ghvb_combination",
           "heavy_ball", "plms", "split_order"]
