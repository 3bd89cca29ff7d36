"""Constant Acceleration Flow: the sampler and inversion are exact on a constant-acceleration field,
NFE = N + 1, the objective's targets, the two-network module and its save/load round trip."""
import numpy as np
import pytest
import torch

from flowrepro.generative import caf as caf_objective
from flowrepro.samplers import caf as caf_sampler
from flowrepro.samplers.nfe import NFECounter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConstantAcceleration:
    """v0 and a fixed vectors, whatever (x, t): x(t) = x0 + v0 t + a t^2 / 2 exactly."""

    def __init__(self, v0, a) -> None:
        self.v0, self.a = v0, a

    def initial_velocity(self, x, t=None):
        return self.v0.expand_as(x)

    def acceleration(self, x, t, v0):
        assert torch.equal(v0, self.v0.expand_as(x))  # conditioned on the v0 read once
        return self.a.expand_as(x)


def _field():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    return x0, ConstantAcceleration(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64),
                                    torch.tensor([3.0, 0.25, -4.0], dtype=torch.float64))


@pytest.mark.parametrize("times", [[0.0, 1.0], [0.0, 0.5, 1.0], list(np.linspace(0, 1, 6)), [0.0, 0.1, 0.7, 1.0]])
def test_sampler_exact_on_constant_acceleration(times):
    x0, model = _field()
    x1 = caf_sampler.caf(model, x0, times=np.array(times))
    torch.testing.assert_close(x1, x0 + model.v0 + model.a / 2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_inversion_inverts_it(steps):
    x0, model = _field()
    times = np.linspace(0, 1, steps + 1)
    x1 = x0 + model.v0 + model.a / 2
    noise, v0 = caf_sampler.caf_invert(model, x1, times)
    torch.testing.assert_close(noise, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(caf_sampler.caf_round_trip(model, x1, times), x1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_nfe_is_steps_plus_one(steps):
    x0, model = _field()
    counter = NFECounter(model)
    caf_sampler.caf(counter, x0, times=np.linspace(0, 1, steps + 1))
    assert counter.calls == steps + 1


def test_sample_stage_gives_nfe_minus_one_steps():
    from flowrepro.stages.sample import sampler_runs

    name, runs = sampler_runs("caf", {"nfe": [2, 3, 5]})
    assert name == "caf" and [len(kwargs["times"]) - 1 for _, kwargs in runs] == [1, 2, 4]
    assert [len(kw["times"]) - 1 for _, kw in sampler_runs("euler", {"nfe": [2, 3]})[1]] == [2, 3]  # others unchanged


class Recording(torch.nn.Module):
    """v_phi = a constant c (a parameter); a_theta = 0; records every call's inputs."""

    def __init__(self, c) -> None:
        super().__init__()
        self.c, self.calls = torch.nn.Parameter(c.clone()), []

    def forward(self, x, t, v0=None):
        self.calls.append((x.detach().clone(), t.clone(), None if v0 is None else v0.detach().clone()))
        return self.c.expand_as(x) if v0 is None else torch.zeros_like(x)


def test_objective_targets_on_a_known_pair():
    from flowrepro.generative.losses import mse

    h = 1.5
    x0, x1 = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    t = torch.tensor([0.25, 0.5])
    c = torch.tensor([0.3, -0.2])
    model = Recording(c)
    loss = caf_objective.caf({}, None, mse, None, h=h)(model, x0, x1, t)
    tt = t[:, None]
    # the official form of the path (get_train_tuple plus v0 (t - t^2)), written independently
    official = lambda v0: (1 - tt**2) * x0 + tt**2 * x1 + v0 * (tt - tt**2)  # noqa: E731
    velocity_call, v0_call, acceleration_call = model.calls
    torch.testing.assert_close(velocity_call[0], official(h * (x1 - x0)))
    assert torch.equal(v0_call[0], x0) and torch.equal(v0_call[1], torch.zeros(2))  # v0_hat = v_phi(x0, 0)
    v0_hat = c.expand_as(x0)
    torch.testing.assert_close(acceleration_call[0], official(v0_hat))
    torch.testing.assert_close(acceleration_call[2], v0_hat)
    expected = ((c - h * (x1 - x0)) ** 2).sum(1).mean() + ((2 * (x1 - x0) - 2 * v0_hat) ** 2).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()  # v0_hat carries no gradient: only the velocity loss reaches c
    torch.testing.assert_close(model.c.grad, (2 * (c - h * (x1 - x0))).mean(0))


def test_caf_point_reaches_x1_for_any_v0():
    x0, x1, v0 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(caf_objective.caf_point(x0, x1, v0, torch.ones(4)), x1)
    torch.testing.assert_close(caf_objective.caf_point(x0, x1, v0, torch.zeros(4)), x0)


@pytest.mark.parametrize("shape, settings", [((2,), {"width": 16, "depth": 2}), ((1, 8, 8), {"network": "unet_smoke"})])
def test_network_hook_shapes(shape, settings):
    from flowrepro.stages.train import build_model

    torch.manual_seed(0)
    network = build_model(shape, settings, {"objective": {"name": "caf", "h": 1.5}})
    x, t = torch.randn(3, *shape), torch.rand(3)
    v = network(x, t)
    assert v.shape == x.shape and network(x, t, v).shape == x.shape
    first = next(network.acceleration.parameters()) if len(shape) == 1 else network.acceleration.unet.conv_in.weight
    assert first.shape[1] == 2 * shape[0] + (1 if len(shape) == 1 else 0)  # [x, v0] (+ t for the MLP)


def test_save_load_round_trip_gives_the_same_field(tmp_path):
    from flowrepro import io
    from flowrepro.stages.train import build_model, load_models

    spec = {"path": "linear", "coupling": "reflow", "objective": {"name": "caf", "h": 1.5}}
    settings = {"width": 16, "depth": 2}
    torch.manual_seed(0)
    network = build_model((2,), settings, spec)
    result = {"key": "k", "dataset": "moons", "model": "caf", "shape": (2,), "spec": spec, "settings": settings,
              "plugins": [], "steps": 1, "data_var": 1.0,
              "seeds": {0: {"state_dict": network.state_dict(), "losses": [0.0], "wall_s": 0.0}}}
    io.save_model_file(str(tmp_path / "caf.pt"), result)
    _, models = load_models(str(tmp_path / "caf.pt"))
    field = models[0]
    assert field.is_velocity_field is False
    x, t = torch.randn(5, 2), torch.rand(5)
    with torch.no_grad():
        v0 = network(x, torch.zeros(5))
        torch.testing.assert_close(field.initial_velocity(x), v0)
        torch.testing.assert_close(field.acceleration(x, t, v0), network(x, t, v0))
    with pytest.raises(TypeError, match="no velocity field"):
        field(x, t)
    from flowrepro.samplers.trained_diffusion import float64_copy

    round_trip = caf_sampler.flow_round_trip("caf", float64_copy(field), caf_sampler.caf(field, x, np.linspace(0, 1, 3)).numpy(),
                                             np.linspace(0, 1, 3), 4, "cpu")
    assert round_trip.shape == (4, 2) and round_trip.dtype == np.float64


def test_euler_round_trip_is_exact_on_a_constant_field():
    class Constant:
        network = None

        def __call__(self, x, t):
            return torch.ones_like(x)

    x1 = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(caf_sampler.euler_round_trip(Constant(), x1, np.linspace(0, 1, 3)), x1)


def test_coupling_error_against_the_reference_run(tmp_path):
    import json

    from flowrepro.metrics.coupling import coupling_error, coupling_references

    reference = np.arange(12, dtype=np.float32).reshape(3, 4)
    index = {"model": "rf1", "dataset": "moons", "runs": [
        {"key": "rk4_pairs/uniform/steps=25/seed0", "sampler": "rk4_pairs", "setting": "steps=25", "seed": 0},
        {"key": "euler/uniform/steps=1/seed0", "sampler": "euler", "setting": "steps=1", "seed": 0}]}
    np.savez(tmp_path / "rf1.npz", **{"runs": np.array(json.dumps(index)), "rk4_pairs/uniform/steps=25/seed0": reference,
                                      "euler/uniform/steps=1/seed0": reference + 1})
    found = coupling_references({"coupling_reference": {"model": "rf1", "sampler": "rk4_pairs"}}, [str(tmp_path / "rf1.npz")])
    assert list(found) == [("moons", 0)] and np.array_equal(found[("moons", 0)], reference)
    assert coupling_error(reference + np.array([3.0, 4.0, 0.0, 0.0]), reference) == pytest.approx(5.0)
    assert coupling_references({}, [str(tmp_path / "rf1.npz")]) == {}


def test_a_coupling_reference_to_an_unknown_model_or_entry_fails_at_config_load(tmp_path):
    import yaml

    from conftest import REPO
    from flowrepro.config import ConfigError, load_experiment

    spec = yaml.safe_load((REPO / "config/experiments/caf.yaml").read_text())
    path = tmp_path / "caf.yaml"
    for key, value, message in (("model", "rf9", "coupling_reference/model names unknown model 'rf9'"),
                                ("sampler", "rk4", "coupling_reference/sampler names no sampling entry 'rk4'")):
        bad = {**spec, "coupling_reference": {**spec["coupling_reference"], key: value}}
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message):
            load_experiment(path)
