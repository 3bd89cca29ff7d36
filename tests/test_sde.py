"""Stochastic samplers and the consistency objective, checked against exact fields."""
import numpy as np
import pytest
import torch

from flowrepro.data.gmm import ring_mixture
from flowrepro.generative.objectives import velocity_consistency
from flowrepro.generative.parameterization import AsVelocity, VelocityModel
from flowrepro.generative.paths import LinearPath, VPPath
from flowrepro.metrics.wasserstein import exact_w2
from flowrepro.samplers import ode, sde
from flowrepro.samplers.nfe import NFECounter

MIXTURE = ring_mixture(dim=2)


def _exact_linear_field():
    return VelocityModel(lambda x, t: MIXTURE.velocity(x, t), LinearPath())


def _target(n=1000):
    return MIXTURE.sample(n, np.random.default_rng(1))


def test_interpolant_sde_with_exact_velocity_reaches_the_target():
    x0 = torch.randn(1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    times = np.linspace(0, 1, 201)
    x_sde = sde.interpolant_sde(_exact_linear_field(), x0, times, epsilon=1.0)
    x_ode = ode.integrate_fixed(_exact_linear_field(), x0, times, "euler")
    floor = exact_w2(_target(), MIXTURE.sample(1000, np.random.default_rng(2)))
    assert exact_w2(x_sde.numpy(), _target()) < 1.5 * floor + 0.05
    assert exact_w2(x_ode.numpy(), _target()) < 1.5 * floor + 0.05
    # epsilon = 0 is the Euler ODE solver exactly
    torch.testing.assert_close(sde.interpolant_sde(_exact_linear_field(), x0, times, epsilon=0.0), x_ode)


def test_sde_corrects_a_velocity_error_the_ode_keeps():
    """v + 0.5 x with the exact score: the SDE's Langevin part pulls samples back, the ODE cannot."""
    x0 = torch.randn(1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    times = np.linspace(0, 1, 101)
    wrong = sde.PerturbedVelocity(_exact_linear_field(), 0.5)
    w2_sde = exact_w2(sde.interpolant_sde(wrong, x0, times, epsilon=1.0).numpy(), _target())
    w2_ode = exact_w2(ode.integrate_fixed(wrong, x0, times, "euler").numpy(), _target())
    assert w2_sde < w2_ode


@pytest.mark.parametrize("sampler,calls_per_step", [(sde.predictor_corrector, 2), (sde.reverse_sde_euler_maruyama, 1)])
def test_reverse_sde_samplers_sample_a_gaussian_from_its_exact_noise_prediction(sampler, calls_per_step):
    m, s, path = 1.5, 0.5, VPPath()

    def epsilon(x, t):  # E[x0 | x_t = x] for data N(m, s^2)
        a, b, _, _ = (c.reshape(-1, 1) for c in path.coefficients(t))
        return a * (x - b * m) / (a**2 + (b * s) ** 2)

    counter = NFECounter(AsVelocity(epsilon, path))
    x0 = torch.randn(4000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = sampler(counter, x0, np.linspace(0, 1, 201))
    assert counter.calls == calls_per_step * 200 == sampler.calls_per_step * 200
    assert x.mean().item() == pytest.approx(m, abs=0.05)
    assert x.std().item() == pytest.approx(s, rel=0.08)


def test_pc_needs_the_vp_path():
    with pytest.raises(ValueError, match="vp path"):
        sde.predictor_corrector(_exact_linear_field(), torch.zeros(2, 2), np.linspace(0, 1, 3))


def test_velocity_consistency_loss_vanishes_on_a_straight_flow_only():
    c = torch.tensor([2.0, -1.0])
    exact = lambda x, t: (c - x) / (1 - t).reshape(-1, 1)  # noqa: E731  (point-mass data: straight paths)
    objective = velocity_consistency({"segments": 2, "delta": 0.01}, LinearPath(), None, None)
    g = torch.Generator().manual_seed(0)
    x0, x1, t = torch.randn(256, 2, generator=g), c.expand(256, 2), torch.rand(256, generator=g)
    consistent = objective(exact, x0, x1, t, exact).item()
    wrong = lambda x, t: exact(x, t) + 0.3 * x  # noqa: E731
    inconsistent = objective(wrong, x0, x1, t, wrong).item()  # O(dt^2): f drifts by ~dt |f'| between t and t + dt
    assert consistent < 1e-9 and inconsistent > 1e3 * consistent and inconsistent > 1e-6
