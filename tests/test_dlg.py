"""Denoising Langevin Gibbs (flowrepro.samplers.dlg) pinned to its definitions on the exact mixture."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from flowrepro.data.gmm import GaussianMixture, mixture
from flowrepro.samplers import dlg
from flowrepro.samplers.diffusion import ExactMixture, exact_eps, vp_alpha_sigma
from flowrepro.samplers.nfe import NFECounter


def _convolved_pdf(gmm, x: np.ndarray, sigma: float) -> np.ndarray:
    """p(x | sigma) = sum_k pi_k N(x; mu_k, Sigma_k + sigma^2 I), by scipy (independent of the eigen path)."""
    eye = np.eye(gmm.dim)
    return sum(w * multivariate_normal(m, c + sigma**2 * eye).pdf(x) for w, m, c in zip(gmm.weights, gmm.means, gmm.covs))


@pytest.mark.parametrize("name", ["gmm2d", "gmm16d"])
def test_sigma_posterior_equals_brute_force(name):
    gmm = mixture(name)
    grid = dlg.sigma_grid(6.0, 40)
    x = torch.as_tensor(gmm.sample(4, np.random.default_rng(0)), dtype=torch.float64)
    x = x + 0.7 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dens = np.stack([_convolved_pdf(gmm, x.numpy(), float(s)) for s in grid], axis=1)  # (n, J)
    brute = dens / dens.sum(axis=1, keepdims=True)  # uniform prior over grid indices
    ours = dlg.sigma_posterior(ExactMixture(gmm), x, grid).numpy()
    np.testing.assert_allclose(ours, brute, rtol=1e-8, atol=1e-14)


def test_sigma_grid_is_the_official_one():
    grid = dlg.sigma_grid(50.0)
    official = 0.01 * (50.0 / 0.01) ** np.linspace(1.0, 1e-3, 1000)
    np.testing.assert_allclose(grid.numpy(), official, rtol=1e-6)


@pytest.mark.parametrize("name", ["gmm2d", "gmm16d"])
def test_ve_score_is_the_vp_eps_and_the_mixture_score(name):
    gmm = mixture(name)
    exact, score = ExactMixture(gmm), dlg.VEScore(ExactMixture(gmm))
    x = 3 * torch.randn(6, gmm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    levels = torch.tensor([0.05, 0.3, 1.0, 2.0, 7.0, 40.0], dtype=torch.float64)
    batched = score(x, levels)  # per-sample sigma in one call
    for i, s in enumerate(levels.tolist()):
        alpha, _ = vp_alpha_sigma(s)
        want = -exact_eps(gmm, alpha * x[i : i + 1], s) / s  # through GaussianMixture.score (Cholesky)
        np.testing.assert_allclose(batched[i : i + 1].numpy(), want.numpy(), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(score(x[i : i + 1], s).numpy(), (-exact.eps(alpha * x[i : i + 1], s) / s).numpy(),
                                   rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("eps", [0.01, 0.7])
def test_tweedie_is_the_posterior_mean(eps):
    gmm = mixture("gmm16d")
    x = torch.as_tensor(gmm.sample(5, np.random.default_rng(3)), dtype=torch.float64)
    x = x + eps * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    got = dlg.tweedie(dlg.VEScore(ExactMixture(gmm)), x, eps).numpy()
    eye, xs = np.eye(gmm.dim), x.numpy()
    comp = np.stack([w * multivariate_normal(m, c + eps**2 * eye).pdf(xs) for w, m, c in zip(gmm.weights, gmm.means, gmm.covs)], 1)
    resp = comp / comp.sum(1, keepdims=True)
    means = np.stack([m + (c @ np.linalg.solve(c + eps**2 * eye, (xs - m).T)).T for m, c in zip(gmm.means, gmm.covs)], 1)
    np.testing.assert_allclose(got, (resp[..., None] * means).sum(1), rtol=1e-7, atol=1e-8)


def test_langevin_at_fixed_sigma_keeps_the_convolved_gaussian():
    """One Gaussian N(m, D), sigma fixed: p(x | sigma) = N(m, D + sigma^2 I). ULA with step eta has the
    exact stationary law N(m, v / (1 - eta / (4 v))) per axis (v = D_ii + sigma^2): started at p(x | sigma),
    100 steps (the initial offset decays by (1 - eta / (2 v))^100 < 1e-3) must keep the mean (within 5
    standard errors) and give that variance (within 7%: the sampling error of a variance from 4000 draws
    is 2.2%, so 3 standard errors)."""
    gmm = GaussianMixture(np.array([1.0]), np.array([[1.0, -2.0]]), np.array([np.diag([0.5, 2.0])]))
    score, sigma, eta, n = dlg.VEScore(ExactMixture(gmm)), 0.5, 0.1, 4_000
    v = np.array([0.5, 2.0]) + sigma**2
    gen = torch.Generator().manual_seed(5)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64) + torch.randn(n, 2, dtype=torch.float64, generator=gen) * torch.tensor(np.sqrt(v))
    for _ in range(100):
        x = dlg.langevin_step(score, x, sigma, eta, gen)
    mean, var = x.mean(0).numpy(), x.var(0).numpy()
    assert np.all(np.abs(mean - [1.0, -2.0]) < 5 * np.sqrt(v / n))
    np.testing.assert_allclose(var, v / (1 - eta / (4 * v)), rtol=0.07)


class _Spy:
    """Counts the real model evaluations, apart from NFECounter."""

    def __init__(self, fn) -> None:
        self.fn, self.count = fn, 0

    def __call__(self, x, s):
        self.count += 1
        return self.fn(x, s)


def test_nfe_accounting_counts_real_calls():
    exact = ExactMixture(mixture("gmm2d"))
    spy = _Spy(dlg.VEScore(exact))
    skp, levels, rounds = 3, 5, 4
    res = dlg.run_dlg(exact, 16, rounds, 157.0, skp=skp, n_levels=levels, score=NFECounter(spy))
    assert res["samples"].shape == (16 * rounds, 2)
    assert res["calls_burn_in"] == (2 * 19 - 1) + 10 + 10  # KAR2 with 20 levels, then 20 Langevin steps
    assert res["calls_rounds"] == rounds * (skp + 2 * (levels - 1) - 1 + 1)  # the paper's per-round count
    assert spy.count == res["calls_burn_in"] + res["calls_rounds"]
    assert res["posterior_evals"] == 1 + 20 + rounds * skp  # not model calls


def test_harness_rows_amortised_and_total():
    from flowrepro.samplers.experiment import run_sampler_experiment
    from flowrepro.io import read_table

    experiment = {"id": "t", "harness": "vp", "datasets": ["gmm2d"], "metrics": ["w2"],
                  "samplers": {"dlg": {"chains": 20, "rounds": 5, "skp": 4, "n_levels": 4},
                               "vanilla": {"sampler": "dlg", "vanilla": True, "n_levels": 6}}}
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        run_sampler_experiment(experiment, {"n_samples": 100, "n_eval": 100, "seeds": [0]}, f"{tmp}/m.csv")
        table = read_table(f"{tmp}/m.csv")
    rows = table[table["sampler"] == "dlg"].set_index("metric")
    assert rows.loc["w2", "nfe"] == 10  # 4 + 5 + 1 per round, burn-in excluded
    assert math.isclose(rows.loc["nfe_total", "value"], (57 + 5 * 10) / 5)
    assert table[(table["sampler"] == "vanilla") & (table["metric"] == "w2")]["nfe"].item() == 10
