"""Rectified Diffusion pinned to its definition: the pairs are the teacher's own (VP, eps) ODE solve, and
the student's loss compares its data estimate (x_t - a eps_hat) / b with the pair's data point."""
import numpy as np
import pytest
import torch

from conftest import REPO
from flowrepro.generative import losses
from flowrepro.generative.objectives import build_objective
from flowrepro.generative.parameterization import AsVelocity
from flowrepro.generative.paths import VPPath, per_sample
from flowrepro.samplers import ode

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _exact_gaussian_eps(path, mean: float, std: float):
    """E[x0 | x_t] for data N(mean, std^2 I): x_t ~ N(b mean, (a^2 + b^2 std^2) I), so eps = a (x_t - b mean) / var."""
    def eps(x, t):
        a, b, _, _ = (per_sample(c, x) for c in path.coefficients(t))
        return a * (x - b * mean) / (a * a + b * b * std * std)
    return eps


def test_the_vp_eps_odes_map_on_gaussian_data_is_the_standardising_map():
    """The probability-flow ODE of the exact VP eps-model, solved by the reflow pairs' RK4, moves a point along
    its standardised coordinate (x - b mean) / sqrt(a^2 + b^2 std^2): the teacher's own ODE, not a straight line."""
    path, mean, std = VPPath(), 1.5, 0.3
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    end = ode.integrate_fixed(AsVelocity(_exact_gaussian_eps(path, mean, std), path), z, np.linspace(0, 1, 1001), "rk4")
    (a0, b0, _, _), (a1, b1, _, _) = (path.coefficients(torch.tensor([s], dtype=torch.float64)) for s in (0.0, 1.0))
    expected = b1 * mean + (a1**2 + b1**2 * std**2).sqrt() * (z - b0 * mean) / (a0**2 + b0**2 * std**2).sqrt()
    torch.testing.assert_close(end, expected, atol=1e-3, rtol=0)  # RK4 near the stiff data end


def test_reflow_pairs_of_an_eps_model_are_its_own_probability_flow_solve(tmp_path, tiny_scale):
    """The reflow-pairs job on a trained VP eps-model (rectified_diffusion's teacher) stores x1 = RK4 of that
    model's ODE (eps converted to velocity on its VP path) from the stored x0."""
    from flowrepro.config import flow_settings, load_scale
    from flowrepro.stages import acquire, sample, train

    data = tmp_path / "spirals.npz"
    acquire.run("spirals", str(data), n_train=2000, n_test=500, seed=0, download_dir=None, mirror=None)
    model_file, pairs_file = tmp_path / "vp_eps.pt", tmp_path / "vp_eps.pairs.npy"
    train.run_from_experiment(str(REPO / "config/experiments/rectified_diffusion.yaml"), str(tiny_scale), "spirals", "vp_eps",
                              str(data), str(model_file), progress=False)
    sample.reflow_pairs(str(tiny_scale), str(model_file), str(pairs_file))
    pairs = torch.as_tensor(np.load(pairs_file))[0]
    _, models = train.load_models(str(model_file))
    assert isinstance(models[0], AsVelocity) and isinstance(models[0].path, VPPath)
    steps = flow_settings(load_scale(tiny_scale), "spirals")["pair_steps"]
    with torch.no_grad():
        own = ode.integrate_fixed(models[0], pairs[0], np.linspace(0, 1, steps + 1), "rk4")
    torch.testing.assert_close(pairs[1], own, atol=1e-5, rtol=1e-5)


def test_the_data_space_loss_compares_the_data_estimate_with_the_pairs_data_point():
    path, generator = VPPath(), torch.Generator().manual_seed(3)
    x0, x1, t = torch.randn(32, 2, generator=generator), torch.randn(32, 2, generator=generator), torch.rand(32, generator=generator)
    network = lambda x, s: 0.5 * x + s[:, None]  # noqa: E731
    objective = build_objective({"prediction": "epsilon", "objective": {"name": "regression", "loss_on": "data"}}, path,
                                losses.pseudo_huber)
    a, b, _, _ = (per_sample(c, x1) for c in path.coefficients(t))
    xt = a * x0 + b * x1
    assert float(objective(network, x0, x1, t)) == pytest.approx(float(losses.pseudo_huber((xt - a * network(xt, t)) / b, x1)))
    exact = lambda x, s: x0  # noqa: E731  (the pair's own noise: the data estimate is x1 exactly)
    assert float(objective(exact, x0, x1, t)) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="loss_on"):
        build_objective({"objective": {"name": "regression", "loss_on": "data"}}, path, losses.mse)
