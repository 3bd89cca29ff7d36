"""PFGM++ / EDM pieces against their definitions (generative/edm.py, samplers/edm.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flowrepro.generative import edm
from flowrepro.samplers import edm as edm_sampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _radii(n: int, N: int, D: float, sigma: float, seed: int) -> np.ndarray:
    """||R u|| from the identity r n / ||w|| (what training and the prior use)."""
    import torch

    noise = torch.randn(n, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = edm.perturbation(noise, torch.full((n,), sigma, dtype=torch.float64), D, np.random.default_rng(seed))
    return x.norm(dim=1).numpy()


@pytest.mark.parametrize("N, D", [(2, 1.0), (2, 4.0), (64, 16.0), (64, 4.0)])
def test_radius_law_matches_the_official_beta_form(N, D):
    sigma, r = 0.7, 0.7 * math.sqrt(D)
    ours = _radii(20_000, N, D, sigma, seed=1)
    # exact: B = R^2 / (R^2 + r^2) ~ Beta(N/2, D/2)
    B = ours ** 2 / (ours ** 2 + r ** 2)
    assert stats.kstest(B, stats.beta(N / 2, D / 2).cdf).pvalue > 1e-3
    # two-sample against the official sampler r sqrt(B / (1 - B))
    official = edm.radii_official(20_000, N, D, r, np.random.default_rng(2))
    assert stats.ks_2samp(ours, official).pvalue > 1e-3


def test_direction_is_uniform_and_independent_of_the_radius():
    import torch

    noise = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = edm.perturbation(noise, torch.ones(20_000, dtype=torch.float64), 4.0, np.random.default_rng(3)).numpy()
    angle = np.arctan2(x[:, 1], x[:, 0])
    assert stats.kstest(angle, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3
    radius = np.linalg.norm(x, axis=1)
    assert abs(stats.spearmanr(radius, np.abs(angle)).statistic) < 0.03


def test_large_D_is_the_gaussian_kernel_and_small_D_is_not():
    """D = 1e6: (R / sigma)^2 ~ chi2_N (EDM's kernel) within a fixed KS margin; D = 4 is far from it."""
    N, sigma = 8, 2.0
    chi2 = stats.chi2(N).cdf
    near = stats.kstest((_radii(20_000, N, 1e6, sigma, seed=4) / sigma) ** 2, chi2)
    far = stats.kstest((_radii(20_000, N, 4.0, sigma, seed=4) / sigma) ** 2, chi2)
    assert near.statistic < 0.015  # the D = 1e6 law differs from chi2_N by O(N / D) in CDF
    assert far.statistic > 0.1
    assert np.array_equal(_radii(100, N, math.inf, sigma, 5), _radii(100, N, math.inf, sigma, 5))


def test_dimension_parsing():
    assert edm.parse_dimension("inf") == math.inf and edm.parse_dimension(16) == 16.0
    with pytest.raises(ValueError):
        edm.parse_dimension(0)


def test_preconditioning_coefficients_are_edms():
    import torch

    sd = 0.5
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.coefficients(sigma, sd)
    for k, s in enumerate(sigma.tolist()):  # Karras et al. 2022, Table 1, written out per value
        assert c_skip[k].item() == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2), rel=1e-12)
        assert c_out[k].item() == pytest.approx(s * sd / math.sqrt(sd ** 2 + s ** 2), rel=1e-12)
        assert c_in[k].item() == pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2), rel=1e-12)
        assert c_noise[k].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
        # lambda(sigma) c_out^2 = 1: the effective target of F has unit weight (EDM Eq. 8)
        assert edm.loss_weight(sigma[k], sd).item() * c_out[k].item() ** 2 == pytest.approx(1.0, rel=1e-12)
    # at sigma = sd: c_skip = 1/2, c_out = sd / sqrt 2
    assert c_skip[1].item() == pytest.approx(0.5) and c_out[1].item() == pytest.approx(sd / math.sqrt(2))


def test_preconditioned_module_wraps_the_network():
    import torch

    class Probe(torch.nn.Module):  # F(x, t) = 3 x + t: reveals c_in and c_noise
        def forward(self, x, t):
            return 3 * x + t.view(-1, 1)

    module = edm.EDMPrecond(Probe(), sigma_data=0.5)
    x, sigma = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0.1, 1.0, 5.0, 80.0], dtype=torch.float64)
    total = sigma ** 2 + 0.25
    expected = (0.25 / total).view(-1, 1) * x + (sigma * 0.5 / total.sqrt()).view(-1, 1) * (
        3 * x / total.sqrt().view(-1, 1) + (sigma.log() / 4).view(-1, 1))
    assert torch.allclose(module(x, sigma), expected, atol=1e-12)


def _objective(D):
    from flowrepro.generative.objectives import build_objective

    return build_objective({"objective": {"name": "pfgmpp", "D": D}}, None, None)


def test_infinite_D_objective_is_edms_loss_on_a_fixed_batch():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model = lambda x, s: net(x) * s.view(-1, 1)  # noqa: E731  any D(x; sigma)
    y, n, t = torch.randn(16, 2), torch.randn(16, 2), torch.rand(16)
    ours = _objective("inf")(model, n, y, t).item()
    # EDM (training/loss.py EDMLoss): ln sigma ~ N(-1.2, 1.2^2), weight (s^2 + sd^2) / (s sd)^2, x = y + sigma n;
    # training_loop: loss.sum() / batch. The step's sigma draws are the objective's (seeded by t).
    sigma = torch.tensor(np.exp(-1.2 + 1.2 * edm._step_rng(t).standard_normal(16)), dtype=torch.float32)
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    edm_loss = (weight.view(-1, 1) * (model(y + sigma.view(-1, 1) * n, sigma) - y) ** 2).sum() / 16
    assert ours == pytest.approx(edm_loss.item(), rel=1e-5)
    assert _objective(1e12)(model, n, y, t).item() == pytest.approx(ours, rel=1e-4)  # D -> inf
    assert _objective(4)(model, n, y, t).item() != pytest.approx(ours, rel=1e-2)


def test_training_sigma_is_lognormal():
    import torch

    draws = np.concatenate([np.log(edm.np.exp(-1.2 + 1.2 * edm._step_rng(torch.rand(64)).standard_normal(64)))
                            for _ in range(100)])
    assert stats.kstest(draws, stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3


class GaussianDenoiser:
    """The exact denoiser of data N(mu, s^2 I) under the Gaussian kernel: E[y | x] = mu + s^2 (x - mu) / (s^2 + sigma^2)."""

    D = math.inf

    def __init__(self, mu: float, s: float) -> None:
        self.mu, self.s = mu, s

    def denoise(self, x, sigma):
        return self.mu + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - self.mu)


def test_heun_with_the_exact_denoiser_reaches_the_data_distribution():
    """The exact ODE map from sigma_max to 0 is x_0 = mu + s (x_T - mu) / sqrt(s^2 + sigma_max^2)."""
    import torch

    mu, s = 0.3, 0.5
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = edm_sampler.SIGMA_MAX * x0  # the D = inf prior
    exact = mu + s * (x_T - mu) / math.sqrt(s ** 2 + edm_sampler.SIGMA_MAX ** 2)
    errors = [(edm_sampler.edm_heun(GaussianDenoiser(mu, s), x0, times=np.zeros(n + 1)) - exact).abs().max().item()
              for n in (64, 128, 256)]
    assert errors[2] < 1e-3
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5  # second order (Heun)
    sample = edm_sampler.edm_heun(GaussianDenoiser(mu, s), x0, times=np.zeros(257)).numpy()
    # data N(mu, s^2) up to the prior's O(mu / sigma_max, s^2 / sigma_max^2) mismatch and sampling error
    assert abs(sample.mean() - mu) < 0.03 and abs(sample.std() - s) < 0.02


def test_prior_radius_is_the_kernel_at_r_max():
    import torch

    N, D = 2, 4.0
    x0 = torch.randn(20_000, N, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    radii = edm_sampler.prior(x0, D, 80.0, np.random.default_rng(6)).norm(dim=1).numpy()
    official = edm.radii_official(20_000, N, D, 80.0 * math.sqrt(D), np.random.default_rng(7))
    assert stats.ks_2samp(radii, official).pvalue > 1e-3


def test_nfe_is_two_n_minus_one_and_budgets_map_to_n():
    import torch

    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.stages.sample import sampler_runs

    name, runs = sampler_runs("edm_heun", {"nfe": [1, 5, 9, 35]})
    steps = [len(kwargs["times"]) - 1 for _, kwargs in runs]
    assert name == "edm_heun" and steps == [1, 3, 5, 18]
    for n in steps:
        counter = NFECounter(GaussianDenoiser(0.0, 1.0))
        edm_sampler.edm_heun(counter, torch.randn(8, 2), times=np.zeros(n + 1))
        assert counter.calls == 2 * n - 1


def test_injected_noise_is_reproducible_and_leaves_the_model_untouched():
    import copy

    import torch

    from flowrepro.generative.edm import Denoiser, EDMPrecond

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x, t):
            return self.linear(torch.cat([x, t.view(-1, 1).expand(len(x), 1)], 1))

    torch.manual_seed(0)
    precond = EDMPrecond(Net(), 0.5)
    before = copy.deepcopy(precond.state_dict())
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))

    def run(D, alpha, seed=5):
        return edm_sampler.edm_heun(Denoiser(precond, D), x0, times=np.zeros(6), seed=seed, inject_noise=alpha)

    assert torch.equal(run(16.0, 0.1), run(16.0, 0.1))
    assert not torch.equal(run(16.0, 0.1), run(16.0, 0.0))
    assert not torch.equal(run(16.0, 0.1), run(16.0, 0.1, seed=6))
    assert all(torch.equal(before[k], v) for k, v in precond.state_dict().items())
