"""DPM-Solver-v3's empirical model statistics (EMS) l, s, b of an eps-model on a lambda grid (Zheng, Lu,
Chen, Zhu, NeurIPS 2023, App. C.1.1; the solver that uses them: :mod:`flowrepro.samplers.dpm_solver_v3`,
whose docstring gives the ODE in lambda = log(alpha / sigma)).

    l = E[sigma diag(d eps / d x)],   f = (sigma eps - l x) / alpha,   f' = df/dlambda along the PF-ODE,
    (s, b) = per-dimension least squares of f' on f:  s = Cov(f, f') / Var f,  b = E f' - s E f,

the expectations over calibration draws x_lambda = alpha x0 + sigma z (x0 from the data, z ~ N(0, I),
the same draws at every lambda: common random numbers give EMS smooth in lambda).

* :func:`ems_exact`: the exact mixture of the harness; l is the exact Jacobian diagonal (closed form,
  or one JVP per coordinate), l' the finite difference of l on the grid (np.gradient), f' one JVP of
  G = sigma eps / alpha in (x, lambda) along (dx/dlambda, 1). All float64.
* :func:`ems_network`: any network (``flowrepro ems`` through
  :func:`flowrepro.samplers.trained_diffusion.network_ems`); l is the paper's Hutchinson estimate
  E[sigma v * (J v)] (Rademacher v, one forward-mode JVP that also gives eps), (s, b) from the same
  JVP along the ODE.

Their cost is counted in ``EMS.calls`` (batched eps evaluations of the calibration set), never in a
sampler's NFE. The grid (:func:`ems_grid`) is uniform in lambda from t = 999 to t = 0 of the DDPM
training schedule (the official grid), optionally united with given trailing levels.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class EMS:
    """Empirical model statistics on an ascending lambda grid: l, s, b have shape (K, d)."""

    lambdas: np.ndarray
    l: np.ndarray  # noqa: E741  (the paper's name)
    s: np.ndarray
    b: np.ndarray
    calls: int = 0  # batched eps evaluations (forward or JVP, n_samples draws each) spent on the EMS

    @classmethod
    def degenerate(cls, lambdas: np.ndarray, dim: int) -> EMS:
        """l = 1, s = b = 0: v3 reduces to DPM-Solver++ multistep."""
        shape = (len(lambdas), dim)
        return cls(np.asarray(lambdas, dtype=np.float64), np.ones(shape), np.zeros(shape), np.zeros(shape))


def alpha_sigma(lam):
    """VP (alpha, sigma) at half-logSNR lambda (floats, arrays or tensors)."""
    if isinstance(lam, (float, int, np.floating, np.ndarray)):
        lam = np.asarray(lam, dtype=np.float64)
        return np.sqrt(1.0 / (1.0 + np.exp(-2 * lam))), np.sqrt(1.0 / (1.0 + np.exp(2 * lam)))
    import torch

    return torch.sqrt(torch.sigmoid(2 * lam)), torch.sqrt(torch.sigmoid(-2 * lam))


def training_lambdas() -> np.ndarray:
    """lambda = -log(VE sigma) of the training steps t = 999 .. 0 (ascending), as ddim_levels computes s."""
    from flowrepro.samplers.diffusion import training_alphas_cumprod

    acp = training_alphas_cumprod()
    return np.array([-math.log(math.sqrt((1 - float(a)) / float(a))) for a in acp[::-1]])


def ems_grid(n_uniform: int = 400, steps=()) -> np.ndarray:
    """Ascending lambda grid from t = 999 to t = 0: ``n_uniform`` uniform points (the official grid),
    united with the levels of DDIM's trailing grid for each step count in ``steps`` (then those run
    on their exact levels: the tests' DPM-Solver++ comparison)."""
    from flowrepro.samplers.momentum import ddim_levels

    train = training_lambdas()
    grid = np.linspace(train[0], train[-1], n_uniform)
    extra = [-math.log(s) for n in steps for s in ddim_levels(int(n))[:-1]]
    if extra:
        grid = np.unique(np.concatenate([grid, extra]))
        grid = grid[np.concatenate([[True], np.diff(grid) > 1e-9])]
        for value in extra:  # exact values for the step levels
            grid[np.argmin(np.abs(grid - value))] = value
    return grid


def forward_jvp(fn: Callable, primals: tuple, tangents: tuple):
    """(fn(*primals), J fn . tangents) by forward-mode AD: torch.func.jvp's result from dual tensors
    (torch.autograd.forward_ad), without functorch's per-op wrapping (5x faster on the mixture's eps)."""
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        out = fwad.unpack_dual(fn(*(fwad.make_dual(p, t) for p, t in zip(primals, tangents))))
        return out.primal, out.tangent


def ems_exact(exact_mixture, lambdas=None, n_samples: int = 1024, seed: int = 0, diagonal: str = "closed_form") -> EMS:
    """The EMS of the exact eps of a Gaussian mixture (:class:`~flowrepro.samplers.diffusion.ExactMixture`).

    App. C.1.1 of the paper, on ``n_samples`` calibration draws x = alpha x0 + sigma z (x0 from the
    mixture, z ~ N(0, I), the same draws at every lambda, from ``seed``):

    * l = E[sigma diag(d eps/dx)], the diagonal exactly: ``diagonal="closed_form"`` differentiates the
      mixture posterior by hand (``ExactMixture.eps_jacobian_diagonal``, one evaluation), ``"jvp"`` takes one
      forward-mode JVP per coordinate (d evaluations; the tests check the two agree);
    * f = (sigma eps - l x) / alpha and f' its total lambda-derivative along the ODE
      dx/dlambda = sigma^2 x - sigma eps: with G = sigma eps / alpha and u = x / alpha,
      f' = G' - l' u + l G (G' one JVP along (dx/dlambda, 1); l' the finite difference of l);
    * s = Cov(f, f') / Var(f), b = E f' - s E f per dimension (s = 0 where Var f = 0).

    Cache-free and float64; the evaluations are closed-form eps calls (autograd through
    ExactMixture.posterior), counted in ``EMS.calls``, not in any sampler's NFE.
    """
    import torch
    from torch.func import jvp, vmap

    lambdas = ems_grid() if lambdas is None else np.asarray(lambdas, dtype=np.float64)
    gen = np.random.default_rng(seed)
    x0 = torch.as_tensor(exact_mixture.gmm.sample(n_samples, gen), dtype=torch.float64)
    z = torch.as_tensor(gen.standard_normal(x0.shape), dtype=torch.float64)
    dim = x0.shape[1]
    basis = torch.eye(dim, dtype=torch.float64)[:, None, :].expand(dim, n_samples, dim)
    if diagonal not in ("closed_form", "jvp"):
        raise ValueError(f"diagonal {diagonal!r}: closed_form or jvp")

    def eps_at(x, lam):
        alpha, sigma = alpha_sigma(lam)
        return exact_mixture.noise_mean(x, alpha, sigma)  # E[x0 | x] alone: no E[x1 | x] computed and dropped

    def scaled_eps(x, lam):  # G = sigma eps / alpha = e^{-lambda} eps
        return torch.exp(-lam) * eps_at(x, lam)

    l_rows, firsts = [], []
    calls = 0
    for lam_value in lambdas:
        lam = torch.tensor(float(lam_value), dtype=torch.float64)
        alpha, sigma = alpha_sigma(lam)
        x = alpha * x0 + sigma * z
        if diagonal == "jvp":
            columns = vmap(lambda v: jvp(lambda y: eps_at(y, lam), (x,), (v,))[1])(basis)  # (d, n, d): J e_j
            diag = torch.diagonal(columns, dim1=0, dim2=2)  # (n, d): d eps_i / d x_i
            calls += dim
        else:
            diag = exact_mixture.eps_jacobian_diagonal(x, float(alpha), float(sigma))
            calls += 1
        l_rows.append((sigma * diag).mean(0))
        eps = eps_at(x, lam)
        velocity = sigma**2 * x - sigma * eps  # dx/dlambda on the PF-ODE
        value, total = forward_jvp(scaled_eps, (x, lam), (velocity, torch.ones((), dtype=torch.float64)))
        firsts.append((x / alpha, value, total))
        calls += 2
    stats = [_stats(u, g_value, g_total, l_k) for (u, g_value, g_total), l_k in zip(firsts, l_rows)]
    return _fit_sb(lambdas, torch.stack(l_rows).numpy(), stats, calls)


def ems_network(eps_fn: Callable, lambdas, x0, z=None, seed: int = 0, diagonal: str = "hutchinson",
                batch: int | None = None) -> EMS:
    """The EMS of any eps-model ``eps_fn(x, lam)`` (a network; differentiable in x and in the 0-d
    float64 tensor lam) from calibration data ``x0`` (n, ...), as App. C.1.1 of the paper:

    * x = alpha x0 + sigma z at every lambda (z ~ N(0, I) from ``seed`` unless given; the same draws at
      every lambda);
    * l = E[sigma diag(d eps/dx)]: ``"hutchinson"`` (the paper's estimator) uses one Rademacher probe v
      per draw (fixed over lambda), diag(J) ~ v * (J v), one forward-mode JVP that also gives eps
      (E[v_i (Jv)_i] = J_ii, variance sum_{j != i} J_ij^2); ``"exact"`` takes one JVP per coordinate;
    * f' from one JVP of G = e^{-lambda} eps = sigma eps / alpha along (dx/dlambda, 1) =
      (sigma^2 x - sigma eps, 1), then (s, b) by least squares as :func:`ems_exact` (same formulas, via
      the centred moments of f, f' and u = x / alpha).

    ``batch`` draws through the network at a time (u, G, G' of all draws at one lambda are kept). ``EMS.calls``
    counts network evaluations of the whole calibration set (a JVP is one): 2 per lambda with
    Hutchinson, d + 2 exact. Statistics in float64, the network in the dtype of ``x0``.
    """
    import torch

    if diagonal not in ("hutchinson", "exact"):
        raise ValueError(f"diagonal {diagonal!r}: hutchinson or exact")
    lambdas = np.asarray(lambdas, dtype=np.float64)
    x0 = torch.as_tensor(x0)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64) if z is None else torch.as_tensor(z, dtype=torch.float64)
    probes = torch.randint(0, 2, x0.shape, generator=gen).to(torch.float64) * 2 - 1
    n, dim, batch = len(x0), int(np.prod(x0.shape[1:])), batch or len(x0)
    one = torch.ones((), dtype=torch.float64)
    l_rows, stats = [], []
    for lam_value in lambdas:
        lam = torch.tensor(float(lam_value), dtype=torch.float64)
        alpha, sigma = alpha_sigma(lam)
        diag_sum, parts = 0, []
        for first in range(0, n, batch):
            x = (alpha * x0[first:first + batch].to(torch.float64) + sigma * z[first:first + batch]).to(x0.dtype)
            if diagonal == "hutchinson":
                v = probes[first:first + batch]
                eps, jv = forward_jvp(lambda y: eps_fn(y, lam), (x,), (v.to(x.dtype),))
                diag = v * jv.detach().to(torch.float64)
            else:
                eps = eps_fn(x, lam)
                diag = torch.empty(x.shape, dtype=torch.float64)
                for j in range(dim):  # column j of the Jacobian, its j-th entry
                    e_j = torch.zeros(x.shape[0], dim, dtype=x.dtype)
                    e_j[:, j] = 1
                    jv = forward_jvp(lambda y: eps_fn(y, lam), (x,), (e_j.reshape(x.shape),))[1]
                    diag.reshape(len(x), dim)[:, j] = jv.detach().reshape(len(x), dim)[:, j].to(torch.float64)
            diag_sum = diag_sum + diag.sum(0)
            eps = eps.detach()  # a network's parameters require grad: no graph is kept
            velocity = sigma**2 * x.to(torch.float64) - sigma * eps.to(torch.float64)  # dx/dlambda on the PF-ODE
            g, h = forward_jvp(lambda y, m: torch.exp(-m) * eps_fn(y, m), (x, lam), (velocity.to(x.dtype), one))
            parts.append((x.to(torch.float64) / alpha, g.detach().to(torch.float64), h.detach().to(torch.float64)))
        l_rows.append((sigma * diag_sum / n).numpy())
        u, g, h = (torch.cat(column) for column in zip(*parts))  # n x d per lambda: centred moments, no cancellation
        stats.append(_stats(u, g, h, l_rows[-1]))
    calls = len(lambdas) * (2 if diagonal == "hutchinson" else dim + 2)
    return _fit_sb(lambdas, np.stack(l_rows), stats, calls)


def _stats(u, g, h, l) -> dict:  # noqa: E741
    """Per-dimension moments of f = G - l u, P = H + l G and u over the draws (centred, float64), from
    which (s, b) follow once l' is known: f' = P - l' u (H = G', the total lambda-derivative of G)."""
    import torch

    u, g, h = (a.to(torch.float64) for a in (u, g, h))
    l = torch.as_tensor(l, dtype=torch.float64)  # noqa: E741
    f, p = g - l * u, h + l * g
    fc, pc, uc = f - f.mean(0), p - p.mean(0), u - u.mean(0)
    return {"f": f.mean(0), "p": p.mean(0), "u": u.mean(0), "ff": (fc * fc).mean(0), "fp": (fc * pc).mean(0), "fu": (fc * uc).mean(0)}


def _fit_sb(lambdas, l, stats: list[dict], calls: int) -> EMS:  # noqa: E741
    """(s, b) per lambda, l' = np.gradient of l: s = Cov(f, f') / Var(f) = (Cov(f, P) - l' Cov(f, u)) / Var f
    (0 where Var f = 0), b = E f' - s E f = E P - l' E u - s E f (App. C.1.1)."""
    dl = np.gradient(l, lambdas, axis=0)
    s_rows, b_rows = [], []
    for k, m in enumerate(stats):
        m = {key: np.asarray(value, dtype=np.float64) for key, value in m.items()}
        cross = m["fp"] - dl[k] * m["fu"]
        s = np.where(m["ff"] > 0, cross / np.where(m["ff"] > 0, m["ff"], 1.0), 0.0)
        s_rows.append(s)
        b_rows.append(m["p"] - dl[k] * m["u"] - s * m["f"])
    return EMS(np.asarray(lambdas, dtype=np.float64), l, np.stack(s_rows), np.stack(b_rows), calls)


__all__ = ["EMS", "alpha_sigma", "ems_exact", "ems_grid", "ems_network", "training_lambdas"]
