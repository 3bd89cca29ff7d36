"""diffusers schedulers on a trained-model interface: a linear-path velocity field seen as a VP eps-model."""
import pytest
import torch

from flowrepro.data.gmm import ring_mixture
from flowrepro.generative.parameterization import VelocityModel
from flowrepro.generative.paths import LinearPath, VPPath
from flowrepro.samplers import diffusion, trained_diffusion
from flowrepro.samplers.nfe import NFECounter

MIXTURE = ring_mixture(dim=2)


def test_velocity_model_gives_the_exact_vp_epsilon():
    exact = diffusion.ExactMixture(MIXTURE)
    field = trained_diffusion.EpsilonAtLevel(VelocityModel(exact.velocity, LinearPath()))
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    for s in (0.05, 0.5, 3.0, 40.0):
        torch.testing.assert_close(field(x, s), exact.eps(x, s), rtol=1e-4, atol=1e-5)


def test_level_inversion_on_the_vp_path():
    field = trained_diffusion.EpsilonAtLevel(VelocityModel(lambda x, t: x, VPPath()))
    for t in (0.1, 0.5, 0.9):
        a, b, _, _ = VPPath().coefficients(torch.tensor([t], dtype=torch.float64))
        assert field.time_of_level(float(a / b)) == pytest.approx(t, abs=1e-4)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++2m", "heun_discrete"])
def test_scheduler_on_the_trained_interface_matches_the_exact_harness_and_counts_calls(name):
    exact = diffusion.ExactMixture(MIXTURE)
    x_t = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference, _ = diffusion.run_scheduler(exact.eps, x_t, name, 10)
    counter = NFECounter(VelocityModel(exact.velocity, LinearPath()))
    ours = trained_diffusion.sample(counter, x_t, name, 10)
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-3)
    assert counter.calls == diffusion.calls_for_steps(name, 10)  # Heun: 2K - 1
