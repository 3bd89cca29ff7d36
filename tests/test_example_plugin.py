"""examples/ab3_solver: a new solver and its experiment from outside src/ and config/experiments.

These tests load the plugin the way the stages do (a file path relative to the experiment file)
and check the solver itself; tests/test_example_path.py runs it through Snakemake from a copy of
the repository, beside the path example, exactly as the README's "Add your own method" says.
"""
import sys

import numpy as np
import pytest

from conftest import REPO
from flowrepro.config import load_experiment
from flowrepro.registry import SAMPLERS, load_plugins

EXAMPLE = REPO / "examples/ab3_solver"
CLAIMS = {"ab3_beats_euler_4nfe", "ab3_beats_euler_8nfe", "ab3_beats_heun_8nfe", "ab3_beats_rk4_8nfe"}


def _ab3():
    experiment = load_experiment(EXAMPLE / "ab3_solver.yaml")
    load_plugins(experiment["plugins"])
    load_plugins(experiment["plugins"])  # every stage loads the plugins again: no double registration
    return SAMPLERS.get("ab3")


def test_plugin_file_is_found_relative_to_the_experiment():
    experiment = load_experiment(EXAMPLE / "ab3_solver.yaml")
    assert experiment["plugins"] == [str(EXAMPLE / "ab3.py")]
    assert _ab3().calls_per_step == 1
    with pytest.raises(ImportError, match="missing.py"):
        load_plugins([str(EXAMPLE / "missing.py")])


def test_ab3_one_call_per_step_and_converges():
    import torch

    from flowrepro.samplers import ode
    from flowrepro.samplers.nfe import NFECounter

    ab3 = _ab3()
    module = sys.modules[ab3.__module__]
    assert np.allclose(np.array(module.ab_weights([0.0, -1.0, -2.0], 0.0, 1.0)) * 12, [23, -16, 5])
    assert np.allclose(np.array(module.ab_weights([0.0, -1.0], 0.0, 1.0)) * 2, [3, -1])

    def velocity(x, t):  # dx/dt = cos(3t) x, so x(1) = x(0) exp(sin(3) / 3)
        return torch.cos(3 * t)[:, None] * x

    x0 = torch.ones(4, 2, dtype=torch.float64)
    exact = np.exp(np.sin(3.0) / 3)
    errors = {}
    for steps in (8, 16, 32):
        counter = NFECounter(velocity)
        x = ab3(counter, x0, np.linspace(0.0, 1.0, steps + 1))
        assert counter.calls == steps
        euler = ode.integrate_fixed(velocity, x0, np.linspace(0.0, 1.0, steps + 1), "euler")
        errors[steps] = abs(x[0, 0].item() - exact)
        assert errors[steps] < 0.2 * abs(euler[0, 0].item() - exact)
    # at least second order on a uniform grid (third order less the Euler start's error)
    assert errors[16] < errors[8] / 3.5 and errors[32] < errors[16] / 3.5
