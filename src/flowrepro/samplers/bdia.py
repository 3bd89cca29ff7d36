"""BDIA-DDIM: bi-directional integration approximation, a time-reversible DDIM with exact inversion
(Zhang, Lewis, Kleijn, "Exact Diffusion Inversion via Bi-directional Integration Approximation",
ECCV 2024, arXiv:2307.10829; official code guoqiang-zhang-x/BDIA).

VP states z_i at noise levels s_N > ... > s_1 > s_0 = 0 (VE sigma s = sigma / alpha; the sampler runs
from i = N down to 0). With e_i = eps(z_i, s_i), one model call, the DDIM move of z_i to level j is

    D_{i->j}(z_i) = alpha_j (z_i - sigma_i e_i) / alpha_i + sigma_j e_i.

DDIM sets z_{i-1} = D_{i->i-1}(z_i). BDIA also re-estimates the previous slot [t_{i+1}, t_i]
backwards from z_i and mixes it with the forward estimate that produced z_i (paper eq. 13-14):

    z_{i-1} = z_{i+1} - (1 - gamma)(z_{i+1} - z_i) - gamma (D_{i->i+1}(z_i) - z_i) + (D_{i->i-1}(z_i) - z_i)
            = gamma z_{i+1} - gamma D_{i->i+1}(z_i) + D_{i->i-1}(z_i),

with the first step plain DDIM (no z_{N+1}). gamma = 0 is DDIM exactly; the official text-to-image
code recommends gamma = 0.5 at 10 steps and 1.0 at 40. The update is linear in z_{i+1}, so given
the later pair (z_i, z_{i-1}) the earlier state follows exactly (gamma > 0):

    z_{i+1} = (z_{i-1} - D_{i->i-1}(z_i)) / gamma + D_{i->i+1}(z_i).

Inversion of data z_0 (the official image-editing code): z_1 by one naive DDIM inversion step
(eps evaluated at the lower level, z_1 = D_{0->1}(z_0)), then the exact inverse up to the pair
(z_N, z_{N-1}); regenerating from that pair with BDIA retraces every state, so data -> noise -> data
is exact up to rounding whatever the first step's error. DDIM's own inversion,
z_{i+1} = D_{i->i+1}(z_i) with e_i = eps(z_i, s_i), is only O(h) accurate: its round trip is the
baseline (:data:`ROUND_TRIPS`, metric ``inversion_error`` = mean_n ||z_0 - z_0'||).
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from flowrepro.registry import SAMPLERS
from flowrepro.samplers.diffusion import vp_alpha_sigma
from flowrepro.samplers.momentum import ddim_levels


def ddim_move(z, eps, s_from: float, s_to: float):
    """D_{from->to}(z): DDIM's deterministic move of VP state z at level s_from to level s_to."""
    a_from, g_from = vp_alpha_sigma(s_from)
    a_to, g_to = vp_alpha_sigma(s_to)
    return a_to * (z - g_from * eps) / a_from + g_to * eps


def bdia_generate(model: Callable, z_start, levels: list[float], gamma: float, z_first=None):
    """BDIA-DDIM from z_start at levels[0] down to levels[-1]; NFE = len(levels) - 1 (or - 2 from a pair).

    ``z_first``: the state at levels[1] (the pair an inversion hands back); without it the first
    step is DDIM, as in the paper and the official code. Returns (z at levels[-1], z at levels[-2]).
    """
    import torch

    with torch.no_grad():
        if z_first is None:
            z_prev, z = z_start, ddim_move(z_start, model(z_start, levels[0]), levels[0], levels[1])
        else:
            z_prev, z = z_start, z_first
        for i in range(1, len(levels) - 1):  # z = z_i at levels[i], z_prev = z_{i+1}
            s_up, s, s_down = levels[i - 1], levels[i], levels[i + 1]
            eps = model(z, s)
            z_next = gamma * z_prev - gamma * ddim_move(z, eps, s, s_up) + ddim_move(z, eps, s, s_down)
            z_prev, z = z, z_next
    return z, z_prev


def bdia_invert_pair(model: Callable, z_low, z_lowest, levels: list[float], gamma: float):
    """The later pair (z at levels[-2], z at levels[-1]) -> the earliest pair (levels[0], levels[1]).

    z_{i+1} = (z_{i-1} - D_{i->i-1}(z_i)) / gamma + D_{i->i+1}(z_i), one call per state above the
    lowest but the top: NFE = len(levels) - 2. Exact inverse of :func:`bdia_generate`'s BDIA steps.
    """
    import torch

    if gamma <= 0:
        raise ValueError(f"gamma {gamma}: BDIA inverts exactly only for gamma > 0 (gamma = 0 is DDIM)")
    up = levels[::-1]  # ascending: up[0] = the lowest level
    z_below, z = z_lowest, z_low
    with torch.no_grad():
        for i in range(1, len(up) - 1):  # z at up[i], z_below at up[i - 1]
            eps = model(z, up[i])
            z_above = (z_below - ddim_move(z, eps, up[i], up[i - 1])) / gamma + ddim_move(z, eps, up[i], up[i + 1])
            z_below, z = z, z_above
    return z, z_below


def bdia_invert(model: Callable, z0, levels: list[float], gamma: float):
    """Data z0 at levels[-1] -> the pair (z at levels[0], z at levels[1]); NFE = len(levels) - 1.

    One naive DDIM inversion step z_1 = D_{0->1}(z_0) with eps(z_0, s_0) (as the official editing code),
    then the exact inverse :func:`bdia_invert_pair`.
    """
    import torch

    if gamma <= 0:
        raise ValueError(f"gamma {gamma}: BDIA inverts exactly only for gamma > 0 (gamma = 0 is DDIM)")
    with torch.no_grad():
        z1 = ddim_move(z0, model(z0, levels[-1]), levels[-1], levels[-2])
    return bdia_invert_pair(model, z1, z0, levels, gamma)


def ddim_generate(model: Callable, z_start, levels: list[float]):
    """Plain DDIM over ``levels`` (the gamma = 0 case of BDIA, written out): z_{i-1} = D_{i->i-1}(z_i)."""
    import torch

    z = z_start
    with torch.no_grad():
        for s, s_down in pairwise(levels):
            z = ddim_move(z, model(z, s), s, s_down)
    return z


def ddim_invert(model: Callable, z0, levels: list[float]):
    """Naive DDIM inversion: z_{i+1} = D_{i->i+1}(z_i) with eps(z_i, s_i), from levels[-1] up to levels[0]."""
    return ddim_generate(model, z0, levels[::-1])


@SAMPLERS.register("bdia")
def bdia(model: Callable, x_t, steps: int, schedule: str = "uniform", gamma: float = 0.5, **_):
    """BDIA-DDIM sampling from VP noise ``x_t`` at t = 999 on DDIM's trailing grid, ``steps`` calls.

    ``model(x_vp, s)`` is eps at VE sigma s. Default gamma 0.5: the official recommendation at ~10 steps.
    Returns (x at s = 0, (first level, final level)), like :func:`~flowrepro.samplers.diffusion.run_scheduler`.
    """
    if schedule != "uniform":
        raise ValueError(f"schedule {schedule!r}: BDIA runs DDIM's trailing (uniform) grid only")
    levels = ddim_levels(steps)
    x, _ = bdia_generate(model, x_t, levels, gamma)
    return x, (levels[0], levels[-1])


bdia.calls_per_step = 1  # counted model calls per step (the harness plans NFE budgets with it)
bdia.eps_sampler = True  # f(eps, x_t, steps, ...) at VE levels: runs on trained models too (trained_diffusion.is_eps_sampler)


def bdia_round_trip(model: Callable, z0, steps: int, gamma: float = 0.5):
    """Data -> (z_N, z_{N-1}) by BDIA inversion -> data by BDIA from that pair; 2N - 1 calls."""
    levels = ddim_levels(steps)
    z_top, z_next = bdia_invert(model, z0, levels, gamma)
    return bdia_generate(model, z_top, levels, gamma, z_first=z_next)[0]


def ddim_round_trip(model: Callable, z0, steps: int, **_):
    """Data -> z_N by naive DDIM inversion -> data by DDIM; 2N calls."""
    levels = ddim_levels(steps)
    return ddim_generate(model, ddim_invert(model, z0, levels), levels)


#: sampler name -> its data -> noise -> data round trip ``(model, z0, steps, **options) -> z0'``.
ROUND_TRIPS: dict[str, Callable] = {"bdia": bdia_round_trip, "ddim": ddim_round_trip}


def inversion_error(z0, z0_back) -> float:
    """Mean L2 distance between the data and its round trip, mean_n ||z0_n - z0'_n||."""
    import torch

    return float((z0.to(torch.float64) - z0_back.to(torch.float64)).norm(dim=-1).mean())


__all__ = ["ROUND_TRIPS", "bdia", "bdia_generate", "bdia_invert", "bdia_invert_pair", "bdia_round_trip", "ddim_generate", "ddim_invert",
           "ddim_move", "ddim_round_trip", "inversion_error"]
