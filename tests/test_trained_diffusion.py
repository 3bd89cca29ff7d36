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


def test_boss_timesteps_beat_uniform_ddim_steps_on_the_exact_model():
    """BOSS for diffusers: a DP grid of training steps, run by EulerDiscrete (= DDIM), lowers the solver error."""
    from flowrepro.samplers.boss_diffusion import boss_timesteps

    exact = diffusion.ExactMixture(MIXTURE)
    gen = torch.Generator().manual_seed(2)
    x_t, batch = (torch.randn(n, 2, dtype=torch.float64, generator=gen) for n in (400, 128))
    grids = boss_timesteps(exact.eps, batch, 6, n_fine=60, substeps=1)
    assert all(len(grids[k]) == k and grids[k][0] == 999 and grids[k] == sorted(grids[k], reverse=True) for k in grids)
    errors = {}
    for schedule, timesteps in (("uniform", None), ("boss", grids[4])):
        counter = NFECounter(exact.eps)
        x, levels = diffusion.run_scheduler(counter, x_t, "euler_discrete", 4, schedule, timesteps)
        assert counter.calls == 4
        reference = diffusion.reference_endpoint(exact, x_t, levels[0], [levels[1]])[levels[1]]
        errors[schedule] = float((x - reference).norm(dim=-1).mean())
    assert errors["boss"] < 0.8 * errors["uniform"], errors


def test_boss_needs_a_scheduler_that_takes_timesteps():
    exact = diffusion.ExactMixture(MIXTURE)
    with pytest.raises(ValueError, match="no custom timesteps"):
        diffusion.run_scheduler(exact.eps, torch.randn(8, 2, dtype=torch.float64), "ddim", 3, "boss", [999, 500, 100])
    with pytest.raises(ValueError, match="needs its timesteps"):
        diffusion.run_scheduler(exact.eps, torch.randn(8, 2, dtype=torch.float64), "dpmsolver2m", 3, "boss")


def test_time_shift_on_the_trained_interface_with_no_window_is_ddim():
    exact = diffusion.ExactMixture(MIXTURE)
    x_t = torch.randn(128, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = VelocityModel(exact.velocity, LinearPath())
    ddim = trained_diffusion.sample(model, x_t, "ddim", 8)
    counter = NFECounter(model)
    unshifted = trained_diffusion.sample_time_shift(counter, x_t, 8, data_var=1.0, window=0)
    torch.testing.assert_close(unshifted, ddim, rtol=1e-4, atol=1e-4)
    assert counter.calls == 8
    shifted = trained_diffusion.sample_time_shift(model, x_t, 8, data_var=1.0, window=20)
    assert not torch.allclose(shifted, ddim)  # the window moves the evaluation times


def test_lms_coefficients_are_computed_once_and_unchanged(monkeypatch):
    """The LMS coefficient cache returns diffusers' own numbers and skips the quadrature on a repeat run."""
    import diffusers

    exact = diffusion.ExactMixture(MIXTURE)
    x_t = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    diffusion._LMS_COEFFICIENTS.clear()
    cached, _ = diffusion.run_scheduler(exact.eps, x_t, "lms", 8)
    quadratures = []
    original = diffusers.LMSDiscreteScheduler.get_lms_coefficient
    monkeypatch.setattr(diffusers.LMSDiscreteScheduler, "get_lms_coefficient",
                        lambda self, *a: quadratures.append(a) or original(self, *a))
    again, _ = diffusion.run_scheduler(exact.eps, x_t, "lms", 8)
    assert quadratures == []  # every coefficient came from the cache
    diffusion._LMS_COEFFICIENTS.clear()
    fresh, _ = diffusion.run_scheduler(exact.eps, x_t, "lms", 8)
    assert quadratures  # a cleared cache integrates again
    assert torch.equal(cached, again) and torch.equal(cached, fresh)
