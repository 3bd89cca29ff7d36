"""DPM-Solver-v3 (flowrepro.samplers.dpm_solver_v3): the DPM-Solver++ limit, the EMS in closed form,
the cumulative-integral helper, and one model call per step."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowrepro.data.gmm import GaussianMixture, mixture
from flowrepro.samplers.diffusion import ExactMixture, run_scheduler
from flowrepro.samplers.dpm_solver_v3 import cumulative_trapezoid_exp, dpm_solver_v3
from flowrepro.samplers.model_statistics import EMS, alpha_sigma, ems_exact, ems_grid
from flowrepro.samplers.nfe import NFECounter


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _noise(n, d, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("steps", [5, 8])
def test_degenerate_v3_is_dpmsolver_pp_multistep(order, steps):
    """l = 1, s = b = 0 on a grid holding the trailing levels: diffusers' DPM-Solver++ multistep (Taylor term)."""
    exact = ExactMixture(mixture("gmm2d"))
    x = _noise(200, 2)
    ems = EMS.degenerate(ems_grid(4000, steps=(steps,)), 2)
    ours, levels = dpm_solver_v3(exact.eps, x, steps, ems=ems, order=order, use_corrector=False)
    theirs, their_levels = run_scheduler(exact.eps, x, "dpmsolver++2m", steps, solver_order=order, solver_type="heun")
    assert levels[1] == their_levels[1] == 0.0 and levels[0] == pytest.approx(their_levels[0], rel=1e-6)
    assert float((ours - theirs).abs().max()) < 1e-5
    # the EMS matter: the same run with the mixture's statistics is a different solver
    real = ems_exact(exact, ems.lambdas[::40], n_samples=128, seed=0)
    other, _ = dpm_solver_v3(exact.eps, x, steps, ems=real, order=order, use_corrector=False)
    assert float((other - theirs).abs().max()) > 1e-3


def _gaussian_ems(mean, cov, lam):
    """Closed-form (l, s, b, se_s, se_b) of one Gaussian N(mean, cov) at lambda, for n = 1 (se scale as 1/sqrt(n))."""
    mean, cov = torch.as_tensor(mean), torch.as_tensor(cov)
    d = len(mean)
    eye = torch.eye(d, dtype=torch.float64)

    def parts(lam_t):
        alpha, sigma = alpha_sigma(lam_t)
        c_inv = torch.linalg.inv(alpha**2 * cov + sigma**2 * eye)
        l = torch.diagonal(sigma**2 * c_inv)  # noqa: E741  sigma d eps/dx = sigma^2 C^{-1}: constant in x
        m = sigma**2 / alpha * c_inv  # sigma eps / alpha = m (x - alpha mean)
        a = m - torch.diag(l) / alpha  # f = a x + c
        return a, -alpha * m @ mean, l

    lam_t = torch.tensor(float(lam), dtype=torch.float64)
    a, c, l = parts(lam_t)  # noqa: E741
    da, dc, _ = torch.func.jacfwd(parts)(lam_t)
    alpha, sigma = alpha_sigma(lam_t)
    c_mat = alpha**2 * cov + sigma**2 * eye
    c_inv = torch.linalg.inv(c_mat)
    drift, shift = sigma**2 * eye - sigma**2 * c_inv, sigma**2 * alpha * c_inv @ mean  # dx/dlambda = drift x + shift
    p, q = da + a @ drift, dc + a @ shift  # f' = p x + q
    var_f = torch.diagonal(a @ c_mat @ a.T)
    cov_ff = torch.diagonal(a @ c_mat @ p.T)
    var_df = torch.diagonal(p @ c_mat @ p.T)
    s = cov_ff / var_f
    mean_f, mean_df = a @ (alpha * mean) + c, p @ (alpha * mean) + q
    b = mean_df - s * mean_f
    resid = var_df - cov_ff**2 / var_f
    se_s = torch.sqrt(resid / var_f)
    se_b = torch.sqrt(resid) + mean_f.abs() * se_s
    return l.numpy(), s.numpy(), b.numpy(), se_s.numpy(), se_b.numpy()


def test_ems_of_a_single_gaussian_match_closed_form():
    """eps is linear in x: l = diag(sigma^2 C^-1) exactly; (s, b) within 6 standard errors of the sample size."""
    rng = np.random.default_rng(3)
    d = 3
    basis = rng.normal(size=(d, d))
    cov = 0.2 * np.eye(d) + 0.5 * basis @ basis.T / d
    mean = rng.normal(size=d)
    exact = ExactMixture(GaussianMixture(np.ones(1), mean[None], cov[None]))
    centres = np.array([-3.0, -1.0, 0.0, 1.5, 3.0])
    delta = 1e-3  # l' by central differences on each triplet: O(delta^2)
    lambdas = np.sort(np.concatenate([centres - delta, centres, centres + delta]))
    n = 4096
    ems = ems_exact(exact, lambdas, n_samples=n, seed=1)
    both = ems_exact(exact, lambdas, n_samples=256, seed=1, diagonal="jvp")  # the closed-form diagonal = autograd's
    np.testing.assert_allclose(both.l, ems_exact(exact, lambdas, n_samples=256, seed=1).l, rtol=1e-12, atol=1e-14)
    for lam in centres:
        k = int(np.argmin(np.abs(lambdas - lam)))
        l, s, b, se_s, se_b = _gaussian_ems(mean, cov, lam)  # noqa: E741
        np.testing.assert_allclose(ems.l[k], l, rtol=1e-10)
        assert np.all(np.abs(ems.s[k] - s) < 6 * se_s / math.sqrt(n) + 1e-4), (lam, ems.s[k], s)
        assert np.all(np.abs(ems.b[k] - b) < 6 * se_b / math.sqrt(n) + 1e-4), (lam, ems.b[k], b)


def test_cumulative_trapezoid_against_quadrature():
    """int_0^x b e^a on a non-uniform grid: the helper against scipy's adaptive quadrature."""
    from scipy.integrate import quad

    grid = np.sort(np.concatenate([np.linspace(0.0, 3.0, 1500), np.random.default_rng(0).uniform(0, 3, 500)]))
    a = np.stack([np.sin(grid), 2.0 * grid], axis=1)  # two columns, the second with a large e^a
    b = np.stack([grid**2, np.cos(grid)], axis=1)
    values = cumulative_trapezoid_exp(a, grid, b)
    assert values.shape == (len(grid), 2) and np.all(values[0] == 0)
    for k in (300, 1000, len(grid) - 1):
        first = quad(lambda u: u**2 * math.exp(math.sin(u)), 0, grid[k])[0]
        second = quad(lambda u: math.cos(u) * math.exp(2 * u), 0, grid[k])[0]
        np.testing.assert_allclose(values[k], [first, second], rtol=2e-5, atol=1e-8)
    plain = cumulative_trapezoid_exp(np.zeros((len(grid), 1)), grid)  # b = None: int_0^x 1 = x
    np.testing.assert_allclose(plain[:, 0], grid - grid[0], atol=1e-12)


@pytest.mark.parametrize("steps", [5, 10])
def test_one_model_call_per_step_with_corrector(steps):
    """Predictor + corrector still costs one eps call per step (the corrector reuses it), as the runner plans."""
    from flowrepro.samplers.experiment import _plan

    exact = ExactMixture(mixture("gmm16d"))
    ems = ems_exact(exact, ems_grid(80), n_samples=128, seed=0)
    model = NFECounter(exact.eps)
    x, levels = dpm_solver_v3(model, _noise(64, 16), steps, ems=ems, order=2, use_corrector=True)
    assert model.calls == steps and dpm_solver_v3.calls_per_step == 1
    assert _plan("vp", "dpm_solver_v3", "uniform", steps) == (steps, steps)
    assert torch.isfinite(x).all() and levels[1] == 0.0
    without, _ = dpm_solver_v3(exact.eps, _noise(64, 16), steps, ems=ems, order=2, use_corrector=False)
    assert float((x - without).abs().max()) > 1e-6  # the corrector acts
