"""ODE solvers and the NFE counter: counts come from real calls; orders are right."""
import numpy as np
import pytest
import torch

from flowrepro.samplers import ode
from flowrepro.samplers.nfe import NFECounter


class Linear:
    """dx/dt = -x, exact solution x0 * exp(-t)."""

    def __call__(self, x, t):
        return -x


@pytest.mark.parametrize("method,calls", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_solvers_count_their_calls(method, calls):
    counter = NFECounter(Linear())
    ode.integrate_fixed(counter, torch.ones(5, 2, dtype=torch.float64), np.linspace(0, 1, 7), method)
    assert counter.calls == 6 * calls == 6 * ode.CALLS_PER_STEP[method]


def test_dopri5_nfe_is_counted_and_grows_with_tolerance():
    counts = []
    for rtol in (1e-3, 1e-8):
        counter = NFECounter(Linear())
        x = ode.integrate_dopri5(counter, torch.ones(3, 2, dtype=torch.float64), rtol=rtol, atol=rtol)
        counts.append(counter.calls)
        torch.testing.assert_close(x, torch.full((3, 2), np.exp(-1.0), dtype=torch.float64), rtol=10 * rtol, atol=10 * rtol)
    assert 6 <= counts[0] < counts[1]  # at least one accepted step of 6 stages; more at tighter tolerance


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_convergence_order(method, order):
    x0 = torch.ones(1, 1, dtype=torch.float64)
    errors = [abs(ode.integrate_fixed(Linear(), x0, np.linspace(0, 1, n + 1), method).item() - np.exp(-1)) for n in (16, 32)]
    observed = np.log2(errors[0] / errors[1])
    assert abs(observed - order) < 0.3


def test_counter_reset_returns_count():
    counter = NFECounter(Linear())
    counter(torch.zeros(1), 0.0)
    counter(torch.zeros(1), 0.0)
    assert counter.reset() == 2 and counter.calls == 0


def test_trajectory_and_straightness_of_a_straight_flow():
    from flowrepro.metrics.flow import straightness, transport_cost

    shift = torch.tensor([[2.0, -1.0]])
    times = np.linspace(0, 1, 11)
    _, trajectory = ode.integrate_fixed(lambda x, t: shift.expand_as(x), torch.zeros(4, 2), times, "euler", return_trajectory=True)
    assert trajectory.shape == (11, 4, 2)
    assert straightness(trajectory.numpy(), times) == pytest.approx(0.0, abs=1e-10)
    assert transport_cost(trajectory.numpy()) == pytest.approx(5.0)
    _, curved = ode.integrate_fixed(lambda x, t: torch.stack([torch.cos(3 * t), torch.sin(3 * t)], 1), torch.zeros(4, 2), times, "euler",
                                    return_trajectory=True)
    assert straightness(curved.numpy(), times) > 0.1


def test_exact_w2_of_shifted_sets():
    from flowrepro.metrics.wasserstein import exact_w2

    x = np.random.default_rng(0).normal(size=(200, 2))
    assert exact_w2(x, x) == pytest.approx(0.0, abs=1e-7)
    assert exact_w2(x, x + np.array([3.0, 4.0])) == pytest.approx(5.0, rel=1e-6)
