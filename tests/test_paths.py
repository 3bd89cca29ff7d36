"""Probability paths, couplings, losses and timestep densities of the flow-matching family."""
import math

import pytest
import torch

from flowrepro.generative import couplings, losses
from flowrepro.generative.paths import GammaInterpolant, LinearPath, TrigPath, VPPath, build_path


@pytest.mark.parametrize("path", [LinearPath(), LinearPath(sigma_min=0.1), VPPath(), TrigPath(),
                                  GammaInterpolant(LinearPath(), 0.5), GammaInterpolant(TrigPath(), 1.0)])
def test_conditional_velocity_is_the_time_derivative_of_the_path(path):
    torch.manual_seed(0)
    x0, x1 = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    finite_difference = (path.sample(x0, x1, t + h) - path.sample(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(path.velocity(x0, x1, t), finite_difference, rtol=1e-5, atol=1e-6)


def test_path_endpoints():
    x0, x1 = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    zeros, ones = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    torch.testing.assert_close(LinearPath().sample(x0, x1, zeros), x0)
    torch.testing.assert_close(LinearPath().sample(x0, x1, ones), x1)
    torch.testing.assert_close(LinearPath(sigma_min=0.1).sample(x0, x1, ones), 0.1 * x0 + x1)
    vp = VPPath()
    assert (vp.sample(x0, x1, ones) - x1).abs().max() < 0.05  # alpha at t_eps from 1
    assert (vp.sample(x0, x1, zeros) - x0).abs().max() < 0.05  # alpha_1 = exp(-5.025)


def test_build_path_reads_options():
    assert build_path({"path": "linear", "sigma_min": 1e-4}) == LinearPath(1e-4)
    assert isinstance(build_path({"path": "vp"}), VPPath)
    assert build_path({"path": "trig", "gamma": 0.5}) == GammaInterpolant(TrigPath(), 0.5)
    with pytest.raises(KeyError, match="known: linear, trig, vp"):
        build_path({"path": "cosine"})


def test_minibatch_ot_lowers_transport_cost_and_keeps_marginals():
    data = torch.randn(5000, 2) * 0.3 + torch.tensor([3.0, 0.0])
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x0_ind, x1_ind = couplings.independent(data, 256, g1)
    x0_ot, x1_ot = couplings.minibatch_ot(data, 256, g2)
    torch.testing.assert_close(x1_ot, x1_ind)  # same draws ...
    torch.testing.assert_close(x0_ot.sort(0).values, x0_ind.sort(0).values)  # ... re-paired, not resampled
    cost = lambda a, b: ((a - b) ** 2).sum(1).mean().item()  # noqa: E731
    # |mean shift|^2 = 9 is paid by every coupling; OT removes much of the rest
    # (population values: independent 2.18, OT 2 * (1 - 0.3)^2 = 0.98).
    assert cost(x0_ot, x1_ot) - 9 < 0.6 * (cost(x0_ind, x1_ind) - 9)


def test_u_shaped_density_matches_cosh():
    t = losses.u_shaped_time(200_000, torch.Generator().manual_seed(0), "cpu")
    assert 0 <= t.min() and t.max() <= 1
    histogram = torch.histc(t, bins=10, min=0, max=1) / len(t) * 10
    centres = torch.arange(10) / 10 + 0.05
    density = torch.cosh(4 * (centres - 0.5)) * 4 / (2 * math.sinh(2))
    torch.testing.assert_close(histogram, density.float(), rtol=0.05, atol=0.02)


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far():
    zero = torch.zeros(4, 2)
    assert losses.pseudo_huber(zero, zero).item() == pytest.approx(0.0)
    far = torch.full((4, 2), 10.0)
    assert losses.pseudo_huber(far, zero).item() == pytest.approx(10 * math.sqrt(2), rel=1e-3)
    tiny = torch.full((4, 2), 1e-5)
    c = 0.00054 * 2  # c = 0.00054 d (the official code)
    assert losses.pseudo_huber(tiny, zero).item() == pytest.approx(2e-10 / (2 * c), rel=1e-2)


def test_gamma_interpolant_has_the_latent_noise_marginal():
    """x_t = a x0 + b x1 + gamma z with independent Gaussians has the variance of the affine form."""
    torch.manual_seed(0)
    x0, x1, z = torch.randn(200_000, 1), torch.full((200_000, 1), 2.0), torch.randn(200_000, 1)
    t = torch.full((200_000,), 0.3)
    base, path = TrigPath(), GammaInterpolant(TrigPath(), 0.8)
    explicit = base.sample(x0, x1, t) + (0.8 * 0.3 * 0.7) ** 0.5 * z
    folded = path.sample(x0, x1, t)
    assert explicit.mean().item() == pytest.approx(folded.mean().item(), abs=0.01)
    assert explicit.std().item() == pytest.approx(folded.std().item(), rel=0.01)


@pytest.mark.parametrize("path", [LinearPath(), VPPath(), TrigPath(), GammaInterpolant(LinearPath(), 0.5)])
def test_parameterisation_conversions_round_trip(path):
    from flowrepro.generative.parameterization import epsilon_to_velocity, velocity_to_epsilon

    torch.manual_seed(0)
    x, eps = torch.randn(32, 2, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    t = torch.rand(32, dtype=torch.float64) * 0.8 + 0.1
    torch.testing.assert_close(velocity_to_epsilon(path, x, t, epsilon_to_velocity(path, x, t, eps)), eps)


def test_epsilon_conversion_gives_the_exact_gaussian_velocity_and_score():
    """Data N(m, s^2): E[x0 | x_t] and the marginal velocity/score are known in closed form."""
    from flowrepro.generative.parameterization import epsilon_to_score, epsilon_to_velocity

    m, s, path = 1.5, 0.5, LinearPath()
    x, t = torch.linspace(-2, 3, 11, dtype=torch.float64)[:, None], torch.full((11,), 0.4, dtype=torch.float64)
    a, b = 1 - t[:, None], t[:, None]
    var = a**2 + (b * s) ** 2
    eps = a * (x - b * m) / var  # E[x0 | x_t = x]
    torch.testing.assert_close(epsilon_to_score(path, x, t, eps), -(x - b * m) / var)
    # velocity: d/dt of the mean plus the variance's share: v = m + (b s^2 - a) (x - b m) / var
    torch.testing.assert_close(epsilon_to_velocity(path, x, t, eps), m + (b * s * s - a) * (x - b * m) / var)


def test_distill_objective_fits_the_one_step_map_at_t_zero_only():
    """Rectified-flow distillation: || v(x0, 0) - (x1 - x0) ||, whatever t the trainer draws."""
    from flowrepro.generative.objectives import build_objective

    objective = build_objective({"objective": "distill", "coupling": "reflow"}, LinearPath(), losses.mse)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    x1 = 2 * x0 + 1
    seen_times = []

    def exact(x, t):  # v(x0, 0) = x1 - x0 = x0 + 1
        seen_times.append(t)
        return x + 1

    assert float(objective(exact, x0, x1, torch.rand(64))) == pytest.approx(0.0, abs=1e-12)
    assert all(bool((t == 0).all()) for t in seen_times)
    assert float(objective(lambda x, t: x, x0, x1, torch.rand(64))) > 0.5
    with pytest.raises(ValueError, match="reflow"):
        build_objective({"objective": "distill"}, LinearPath(), losses.mse)
