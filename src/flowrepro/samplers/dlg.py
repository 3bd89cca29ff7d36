"""Denoising MCMC: Denoising Langevin Gibbs (DLG, Kim & Ye 2022, arXiv 2209.14593) on the exact mixture.

VE diffusion of the mixture: x = x1 + sigma z, so p(x | sigma) = sum_k pi_k N(mu_k, Sigma_k + sigma^2 I).
The harness's :class:`~flowrepro.samplers.diffusion.ExactMixture` gives it in closed form: the VP
eps at VE level s is E[z | x_vp], x_vp = alpha x_ve, and the VE score is

    score(x, sigma) = -E[z | x] / sigma,     E[x1 | x] = x + sigma^2 score(x, sigma)   (Tweedie).

DLG (official code 1202kbs/DMCMC, ``Sampling Demo.ipynb``, section "### DLG") runs persistent
chains in the product space (x, sigma) with sigma on the classifier's grid of J = 1000 levels

    sigma_j = sigma_min (sigma_max / sigma_min)^{t_j},  t = linspace(1, 1e-3, J),  sigma_min = 0.01,

and the noise classifier trained with labels drawn uniformly over the J indices (``sample_joint``:
``torch.randint``), i.e. a uniform prior over the grid, so p(sigma_j | x) ∝ p(x | sigma_j), closed
form here (:func:`sigma_posterior`). One step (one score call):

    x <- x + (eta / 2) score(x, sigma) + sqrt(eta) z                  (Langevin, x ~ p(x | sigma))
    sigma <- argmax_j p(sigma_j | x)                                  (the official code's MAP class)

A round takes ``skp`` steps, keeps the lowest-sigma state seen (the round's starting state
included), denoises it from that sigma to 0 with Karras et al.'s Heun (Alg. 1 "KAR1", or Alg. 2
"KAR2" with churn, N levels: 2(N - 1) - 1 calls) and a final Tweedie step at sigma = ``twd_eps``
(0.01, the official CIFAR-10 value). Chains persist across rounds. Burn-in (official CIFAR-10
branch): KAR2 with 20 levels from sigma_max, + 0.5 N(0, I), a MAP sigma, 10 Langevin-Gibbs steps at
eta = 0.5 and 10 at eta.

NFE: the paper's per-sample count is skp + integrator calls + 1 per round (a batched call counts
once; burn-in excluded): ``nfe``. :func:`run_dlg` also returns the total counted calls (burn-in
included) per round and the sigma-posterior evaluations (a classifier's calls in the paper; closed
form here, not model calls).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from flowrepro.samplers.nfe import NFECounter

SIGMA_MIN = 0.01  # the classifier grid's and Karras schedule's lower end in the official code
RHO = 7.0


class VEScore:
    """Exact VE score of the mixture at per-sample levels sigma (n,) or a scalar: one batched call."""

    def __init__(self, exact) -> None:
        self.exact = exact

    def posterior_mean(self, x, sigma):
        """E[x1 | x] under x = x1 + sigma z (per-sample sigma), float64."""
        ex = self.exact
        x64 = x.to(torch.float64)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1).expand(x64.shape[0], 1, 1)
        var = ex.lam[None] + s * s  # (n, K, d): eigenvalues of Sigma_k + sigma^2 I
        proj = torch.einsum("nkd,kde->nke", x64[:, None, :] - ex.means, ex.vecs)
        log_prob = -0.5 * (proj * proj / var).sum(-1) - 0.5 * torch.log(var).sum(-1) + ex.log_w
        resp = torch.softmax(log_prob, dim=-1)
        shrunk = torch.einsum("nke,kde->nkd", proj * ex.lam[None] / var, ex.vecs)  # Sigma_k C_k^{-1} (x - mu_k)
        return (resp.unsqueeze(-1) * (ex.means + shrunk)).sum(1)

    def __call__(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        return ((self.posterior_mean(x, sigma) - x.to(torch.float64)) / (s * s)).to(x.dtype)


def sigma_grid(sigma_max: float, size: int = 1000, sigma_min: float = SIGMA_MIN):
    """The official classifier grid, index 0 = sigma_max, decreasing geometrically to ~sigma_min."""
    t = torch.linspace(1.0, 1e-3, size, dtype=torch.float64)
    return sigma_min * (sigma_max / sigma_min) ** t


def log_likelihood_grid(exact, x, grid):
    """log p(x | sigma_j) up to a constant in x: (n, J), all components, closed form."""
    proj = torch.einsum("nkd,kde->nke", x.to(torch.float64)[:, None, :] - exact.means, exact.vecs)
    var = exact.lam[:, None, :] + grid.reshape(1, -1, 1) ** 2  # (K, J, d): eigenvalues of Sigma_k + sigma_j^2 I
    quad = torch.bmm((proj * proj).transpose(0, 1), (1.0 / var).transpose(1, 2))  # (K, n, J), one matmul per k
    bias = -0.5 * torch.log(var).sum(-1) + exact.log_w[:, None]  # (K, J)
    return torch.logsumexp(quad.mul_(-0.5).add_(bias[:, None, :]), dim=0)  # in place: the (K, n, J) block is the cost


def sigma_posterior(exact, x, grid):
    """p(sigma_j | x) over the grid under the uniform prior over indices (the classifier's labels)."""
    return torch.softmax(log_likelihood_grid(exact, x, grid), dim=-1)


def karras_levels(sigma_start, n_levels: int, sigma_min: float = SIGMA_MIN):
    """Per-chain rho = 7 grid: n_levels - 1 levels from sigma_start to sigma_min, then 0 -> (n, n_levels)."""
    s0 = torch.as_tensor(sigma_start, dtype=torch.float64).reshape(-1, 1)
    u = torch.linspace(0.0, 1.0, n_levels - 1, dtype=torch.float64).reshape(1, -1)
    roots = u * (sigma_min ** (1 / RHO) - s0 ** (1 / RHO)) + s0 ** (1 / RHO)
    return torch.cat([roots**RHO, torch.zeros_like(s0)], dim=1)


def karras_heun(score, x, sigma_start, n_levels: int, churn: bool, gen=None, s_churn=80.0,
                s_tmin=0.05, s_tmax=1.0, s_noise=1.007):
    """KAR1 (churn False) / KAR2 (churn True) as the official ``karras_alg1/2``: dx/dsigma = -sigma score;
    Heun between levels, Euler into sigma = 0; 2 (n_levels - 1) - 1 score calls."""
    levels = karras_levels(sigma_start, n_levels)
    x = x.to(torch.float64)
    for i in range(n_levels - 1):
        s, s_next = levels[:, i : i + 1], levels[:, i + 1 : i + 2]
        if churn:  # add noise to climb to sigma_hat = (1 + gamma) sigma inside [s_tmin, s_tmax]
            inside = ((s >= s_tmin) & (s <= s_tmax)).to(torch.float64)
            s_hat = (1 + min(s_churn / n_levels, math.sqrt(2) - 1) * inside) * s
            x = x + (s_hat**2 - s**2).sqrt() * s_noise * torch.randn(x.shape, dtype=x.dtype, generator=gen)
            s = s_hat
        d1 = -s * score(x, s[:, 0])
        x_next = x + (s_next - s) * d1
        if i < n_levels - 2:
            d2 = -s_next * score(x_next, s_next[:, 0])
            x_next = x + 0.5 * (s_next - s) * (d1 + d2)
        x = x_next
    return x


def tweedie(score, x, eps: float):
    """E[x1 | x] at level eps: x + eps^2 score(x, eps) (one call)."""
    return x + eps * eps * score(x, torch.full((x.shape[0],), eps, dtype=torch.float64))


def langevin_step(score, x, sigma, eta: float, gen=None):
    """Unadjusted Langevin at fixed sigma: x + (eta / 2) score(x, sigma) + sqrt(eta) z (one call)."""
    return x + 0.5 * eta * score(x, sigma) + math.sqrt(eta) * torch.randn(x.shape, dtype=x.dtype, generator=gen)


def run_dlg(exact, n_chains: int, rounds: int, sigma_max: float, *, skp: int = 4, eta: float = 0.8,
            n_levels: int = 4, integrator: str = "kar2", grid_size: int = 1000, twd_eps: float = 0.01,
            init_levels: int = 20, init_noise: float = 0.5, warm=((10, 0.5), (10, None)),
            init=None, seed: int = 0, score=None) -> dict:
    """Persistent DLG chains; ``rounds`` rounds of ``n_chains`` samples each (n_chains * rounds rows).

    ``score`` (default: an :class:`NFECounter` around :class:`VEScore`) counts model calls; ``warm``
    lists (steps, eta) burn-in phases, eta None meaning the sampling eta. Returns the samples and
    the counts: calls_burn_in, calls_rounds, posterior_evals, start_sigma (mean sigma of the
    denoised states).
    """
    gen = torch.Generator().manual_seed(30_000 + seed)
    score = score if score is not None else NFECounter(VEScore(exact))
    grid = sigma_grid(sigma_max, grid_size)
    posterior_evals = 0

    def gibbs(x):  # sigma ~ p(sigma | x): the MAP class, as the official code's argmax
        nonlocal posterior_evals
        posterior_evals += 1
        return grid[log_likelihood_grid(exact, x, grid).argmax(dim=1)]

    dim = exact.dim
    x = init if init is not None else torch.randn(n_chains, dim, dtype=torch.float64, generator=gen)
    x = sigma_max * x.to(torch.float64)
    start = score.calls
    x = karras_heun(score, x, torch.full((n_chains,), sigma_max, dtype=torch.float64), init_levels, True, gen)
    x = x + init_noise * torch.randn(x.shape, dtype=x.dtype, generator=gen)
    s = gibbs(x)
    for steps, step in warm:
        for _ in range(steps):
            x = langevin_step(score, x, s, eta if step is None else step, gen)
            s = gibbs(x)
    burn_in = score.calls - start
    out, starts = [], []
    for _ in range(rounds):
        x_min, s_min = x.clone(), s.clone()
        for _ in range(skp):
            x = langevin_step(score, x, s, eta, gen)
            s = gibbs(x)
            lower = s < s_min  # keep each chain's lowest-sigma state of the round
            x_min = torch.where(lower[:, None], x, x_min)
            s_min = torch.where(lower, s, s_min)
        den = karras_heun(score, x_min, s_min, n_levels, integrator == "kar2", gen)
        out.append(tweedie(score, den, twd_eps))
        starts.append(float(s_min.mean()))
    return {"samples": torch.cat(out), "calls_burn_in": burn_in, "calls_rounds": score.calls - start - burn_in,
            "posterior_evals": posterior_evals, "start_sigma": float(np.mean(starts))}


def vanilla(exact, noise, sigma_max: float, n_levels: int, integrator: str = "kar2", twd_eps: float = 0.01,
            seed: int = 0, score=None):
    """The official "### Vanilla" baseline: Karras Heun from sigma_max with n_levels levels + Tweedie
    (2 (n_levels - 1) calls: 10 at n_levels 6)."""
    gen = torch.Generator().manual_seed(30_000 + seed)
    score = score if score is not None else NFECounter(VEScore(exact))
    start = torch.full((noise.shape[0],), sigma_max, dtype=torch.float64)
    x = karras_heun(score, sigma_max * noise.to(torch.float64), start, n_levels, integrator == "kar2", gen)
    return tweedie(score, x, twd_eps)


def dlg_for_case(case, options: dict, n_eval: int):
    """Harness hook: (samples, amortised nfe, extra metric rows) for one (dataset, seed) case.

    ``chains`` (default n_eval: every sample from its own chain, one round) and ``rounds`` (default
    ceil(n_eval / chains)); the harness VE sigma_max unless ``sigma_max`` is given; ``vanilla: true``
    runs :func:`vanilla` on the case's noise instead.
    """
    from flowrepro.samplers.diffusion import training_alphas_cumprod

    acp = float(training_alphas_cumprod()[-1])
    sigma_max = float(options.get("sigma_max", ((1 - acp) / acp) ** 0.5))
    if options.get("vanilla"):  # the paper's own baseline: the same integrator from sigma_max, fresh noise
        score = NFECounter(VEScore(case.exact))
        x = vanilla(case.exact, case.noise[:n_eval], sigma_max, int(options["n_levels"]),
                    options.get("integrator", "kar2"), float(options.get("twd_eps", 0.01)), case.seed, score)
        return x, score.calls, {}
    chains = int(options.get("chains", n_eval))
    rounds = int(options.get("rounds", math.ceil(n_eval / chains)))
    keys = ("skp", "eta", "n_levels", "integrator", "grid_size", "twd_eps", "init_levels", "init_noise")
    kwargs = {k: options[k] for k in keys if k in options}
    if "warm" in options:
        kwargs["warm"] = [tuple(p) for p in options["warm"]]
    init = case.noise[:chains] if chains <= len(case.noise) else None
    res = run_dlg(case.exact, chains, rounds, sigma_max, init=init, seed=case.seed, **kwargs)
    nfe = res["calls_rounds"] / rounds
    extra = {"nfe_total": (res["calls_burn_in"] + res["calls_rounds"]) / rounds,
             "sigma_posterior_evals": res["posterior_evals"] / rounds, "start_sigma": res["start_sigma"]}
    return res["samples"], int(round(nfe)), extra
