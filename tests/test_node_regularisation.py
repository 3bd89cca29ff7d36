"""Our dopri5 against torchdiffeq, the solver-heuristic regularisers on hand-checkable cases, NFE counting."""
from __future__ import annotations

import math
import random

import pytest
import torch

from flowrepro.optim.dopri5 import B_ERR_DP, dopri5, dopri5_step, initial_step
from flowrepro.optim.node_regularisers import (global_error, global_stiffness, local_error_biased,
                                               local_error_unbiased, local_step_error)

A_MAT = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)  # a damped rotation


def linear(t: float, y: torch.Tensor) -> torch.Tensor:
    return y @ A_MAT.T


def test_step_error_matches_torchdiffeq_y1_error() -> None:
    """Same (y0, h): our raw error vector and 5th-order state equal torchdiffeq's dopri5 step's."""
    from torchdiffeq._impl.dopri5 import Dopri5Solver
    from torchdiffeq._impl.rk_common import _runge_kutta_step

    y0 = torch.tensor([[1.0, 0.3], [-0.2, 0.7]], dtype=torch.float64)
    h = 0.37
    ours = dopri5_step(linear, 0.0, y0, linear(0.0, y0), h, rtol=1e-6, atol=1e-6)
    tableau = Dopri5Solver.tableau
    tableau = type(tableau)(alpha=tableau.alpha.to(torch.float64), beta=[b.to(torch.float64) for b in tableau.beta],
                            c_sol=tableau.c_sol.to(torch.float64), c_error=tableau.c_error.to(torch.float64))
    func = lambda t, y, perturb=None: linear(float(t), y)
    t0, dt = torch.tensor(0.0, dtype=torch.float64), torch.tensor(h, dtype=torch.float64)
    y1, _, y1_error, _ = _runge_kutta_step(func, y0, linear(0.0, y0), t0, dt, t0 + dt, tableau)
    assert ours.error.abs().max() > 1e-8  # a non-trivial error, so the comparison means something
    torch.testing.assert_close(ours.error, y1_error, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(ours.y1, y1, rtol=1e-12, atol=1e-14)
    # Dormand & Prince's own embedded pair (OrdinaryDiffEq) gives a different, equally valid estimate
    dp = dopri5_step(linear, 0.0, y0, linear(0.0, y0), h, rtol=1e-6, atol=1e-6, b_err=B_ERR_DP)
    assert not torch.allclose(dp.error, y1_error) and torch.equal(dp.y1, ours.y1)


def test_solution_matches_torchdiffeq_and_exact() -> None:
    from torchdiffeq import odeint

    y0 = torch.tensor([[1.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    rtol = atol = 1e-7
    sol = dopri5(linear, y0, 0.0, 2.0, rtol=rtol, atol=atol)
    ref = odeint(linear, y0, torch.tensor([0.0, 2.0], dtype=torch.float64), method="dopri5", rtol=rtol, atol=atol)[-1]
    exact = y0 @ torch.linalg.matrix_exp(2.0 * A_MAT).T
    assert (sol.y - ref).abs().max() < 1e-5
    assert (sol.y - exact).abs().max() < 1e-5
    assert sol.n_steps > 5 and all(e.item() <= 1.0 for e in sol.errors)  # every accepted step passed the test
    assert math.isclose(sum(sol.hs), 2.0, rel_tol=1e-12)


def test_nfe_counts_every_evaluation() -> None:
    """NFE = 2 (f0 and the initial-step probe) + 6 per attempted step, rejected ones included."""
    calls = {"n": 0}

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return linear(t, y)

    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    sol = dopri5(f, y0, 0.0, 1.0, rtol=1e-6, atol=1e-6, h0=0.9)  # too large a first step: rejections
    assert sol.n_rejected >= 1
    assert sol.nfe == calls["n"] == 1 + 6 * (sol.n_steps + sol.n_rejected)
    sol = dopri5(f, y0, 0.0, 1.0, rtol=1e-6, atol=1e-6)
    assert sol.nfe == 2 + 6 * (sol.n_steps + sol.n_rejected)


def test_constant_field_has_zero_error_and_one_big_step() -> None:
    """f = c: every RK method is exact, so E = 0, S = 0 (no curvature), and R_E = R_S = 0."""
    c = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    sol = dopri5(lambda t, y: c.expand_as(y), torch.zeros(1, 2, dtype=torch.float64), 0.0, 1.0, h0=0.5)
    assert sol.n_steps == 2 and sol.n_rejected == 0  # h grows x10 after 0.5 but is clipped to land on 1
    assert abs(float(global_error(sol))) < 1e-12 and float(global_stiffness(sol)) == 0.0  # E: roundoff only
    torch.testing.assert_close(sol.y, c)


def test_stiffness_estimate_is_the_eigenvalue_of_a_scalar_linear_ode() -> None:
    """dy/dt = lam y: k7 - k6 = lam (y1 - Y6) exactly, so S_j = |lam| for every step."""
    lam = -7.0
    sol = dopri5(lambda t, y: lam * y, torch.ones(3, 1, dtype=torch.float64), 0.0, 1.0, rtol=1e-6, atol=1e-9)
    for s in sol.stiffness:
        assert math.isclose(s.item(), abs(lam), rel_tol=1e-9)
    # R_S = sum_j S_j h_j = |lam| (t_end - t0)
    assert math.isclose(float(global_stiffness(sol)), 7.0, rel_tol=1e-9)


def test_global_error_is_sum_of_error_ratio_times_step() -> None:
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    sol = dopri5(linear, y0, 0.0, 1.0, rtol=1e-4, atol=1e-4)
    by_hand = 0.0
    t, y = 0.0, y0
    for h in sol.hs:  # re-take each accepted step with the recorded h and recompute E by hand
        step = dopri5_step(linear, t, y, linear(t, y), h, 1e-4, 1e-4)
        scaled = step.error / (1e-4 + 1e-4 * torch.maximum(y.abs(), step.y1.abs()))
        by_hand += math.sqrt((scaled ** 2).mean().item()) * h
        t, y = t + h, step.y1
    assert by_hand > 0
    assert math.isclose(float(global_error(sol)), by_hand, rel_tol=1e-9)


def test_regulariser_gradient_reaches_the_field_parameters() -> None:
    """R_E is differentiable in the vector field's parameters (discretise-then-optimise)."""
    w = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    sol = dopri5(lambda t, y: w * y ** 2, torch.ones(2, 1, dtype=torch.float64), 0.0, 1.0)
    global_error(sol).backward()
    assert w.grad is not None and w.grad.abs() > 0


def test_local_step_error_on_scalar_linear_ode() -> None:
    """One fresh step from (t, u) on dy/dt = lam y: E h equals the by-hand step with the hinit step size."""
    lam, rtol, atol = -3.0, 1e-4, 1e-4
    f = lambda t, y: lam * y
    u = torch.full((4, 1), 0.8, dtype=torch.float64)
    value, nfe = local_step_error(f, 0.25, u, 1.0, rtol, atol)
    h = min(initial_step(f, 0.25, u, f(0.25, u), rtol, atol), 0.75)
    by_hand = dopri5_step(f, 0.25, u, f(0.25, u), h, rtol, atol).error_ratio.item() * h
    assert nfe == 2 + 6  # f0 + hinit probe + k2..k7
    assert math.isclose(float(value), by_hand, rel_tol=1e-12) and by_hand > 0


def test_local_regularisers_pick_their_start_times() -> None:
    """Biased: t* is an accepted step start and u(t*) that step's state; unbiased: any t*, u from
    dense output (close to the exact solution)."""
    lam = -2.0
    f = lambda t, y: lam * y
    y0 = torch.ones(1, 1, dtype=torch.float64)
    sol = dopri5(f, y0, 0.0, 1.0, rtol=1e-8, atol=1e-8)
    for t in (0.13, 0.5, 0.77):
        assert abs(sol.state_at(t).item() - math.exp(lam * t)) < 1e-6
    seen = []
    import flowrepro.optim.node_regularisers as nr

    original = nr.local_step_error
    try:
        nr.local_step_error = lambda func, t, u, t_end, rtol, atol: (seen.append((t, u.item())), (0.0, 0))[1]
        local_error_biased(f, sol, 0.0, 1.0, 1e-4, 1e-4, random.Random(0))
        local_error_unbiased(f, sol, 0.0, 1.0, 1e-4, 1e-4, random.Random(0))
    finally:
        nr.local_step_error = original
    (tb, ub), (tu, uu) = seen
    j = sol.ts.index(tb)  # raises if t* is not a step start
    assert ub == sol.states[j].item()
    assert math.isclose(tu, random.Random(0).random()) and abs(uu - math.exp(lam * tu)) < 1e-6


def test_node_spirals_problem_reports_nfe_and_regulariser() -> None:
    """One training step of each configuration runs; the dataset name carries the regulariser."""
    from flowrepro.optim.runner import run_optimizer

    rows = run_optimizer("node_spirals", "adam", 0.01, 0, 2, log_every=1,
                         problem_kwargs={"regulariser": "local_error_biased", "weight": 10.0, "n_train": 64,
                                         "n_val": 64, "n_test": 64, "batch_size": 32})
    summary = {r["metric"]: r["value"] for r in rows if r["nfe"] == ""}
    assert {r["dataset"] for r in rows} == {"node_spirals_local_error_biased"}
    assert summary["nfe"] >= 8 and summary["train_nfe"] >= 8 + 8  # a solve (>= 2 + 6) plus the local step (2 + 6)
    assert summary["train_reg"] > 0 and 0 <= summary["test_accuracy"] <= 1
    assert any(r["metric"] == "curve_nfe" for r in rows)
    with pytest.raises(KeyError):
        run_optimizer("node_spirals", "adam", 0.01, 0, 1, problem_kwargs={"regulariser": "nope"})
