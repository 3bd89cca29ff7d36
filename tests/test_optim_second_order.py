"""M-FAC, MKOR, XGrad and Lion-K's box metrics (issue #22): each checked against an independent
computation (dense solve, explicit inverse, the base torch optimizer, a hand-made trajectory)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flowrepro.optim.lion_k import box_metrics
from flowrepro.optim.mfac import MFAC, MFACInverse
from flowrepro.optim.mkor import MKOR, code_sm_update, momentum_sm_update
from flowrepro.optim.registry import get_optimizer
from flowrepro.optim.xgrad import XGradAdam, XGradAdamW, XGradSGD


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=gen), torch.randint(3, (16,), generator=gen)) for _ in range(n)]


# ----------------------------------------------------------------------------- M-FAC
@pytest.mark.parametrize("n_grads", [3, 8, 13])  # window partly filled, exactly full, wrapped around
def test_mfac_ihvp_equals_dense_solve(n_grads: int) -> None:
    m, d, damp = 8, 40, 1e-2
    gen = torch.Generator().manual_seed(n_grads)
    grads = torch.randn(n_grads, d, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)
    hinv = MFACInverse(m, d, damp, dtype=torch.float64)
    for g in grads:
        hinv.update(g)
    window = grads[-m:]  # the ring buffer keeps the last m; the 1/m uses m even when fewer are in
    fisher = damp * torch.eye(d, dtype=torch.float64) + window.t() @ window / m
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(fisher, v)
    assert torch.allclose(hinv.mul(v), expected, rtol=0, atol=1e-8 * expected.abs().max().item())
    assert torch.allclose(hinv.dense(), fisher)


def test_mfac_step_is_preconditioned_gradient() -> None:
    """Without momentum one step moves theta by -lr F^{-1} g, F holding only g (plus damping)."""
    net = _mlp()
    opt = MFAC(net.parameters(), lr=0.5, ngrads=4, damp=1e-1)
    before = torch.cat([p.detach().flatten() for p in net.parameters()]).double()
    x, y = _batches(1)[0]
    F.cross_entropy(net(x), y).backward()
    g = torch.cat([p.grad.flatten() for p in net.parameters()]).double()
    opt.step()
    after = torch.cat([p.detach().flatten() for p in net.parameters()]).double()
    fisher = 1e-1 * torch.eye(len(g), dtype=torch.float64) + torch.outer(g, g) / 4
    assert torch.allclose(after - before, -0.5 * torch.linalg.solve(fisher, g), atol=1e-5)


# ----------------------------------------------------------------------------- MKOR
def test_mkor_sherman_morrison_equals_explicit_inverse() -> None:
    gen = torch.Generator().manual_seed(0)
    d, gamma = 7, 0.95
    factor = torch.eye(d, dtype=torch.float64)
    inverse = torch.eye(d, dtype=torch.float64)
    for _ in range(12):
        v = torch.randn(d, generator=gen, dtype=torch.float64)
        factor = gamma * factor + (1 - gamma) * torch.outer(v, v)
        inverse = momentum_sm_update(inverse, v, gamma)
    assert torch.allclose(inverse, torch.linalg.inv(factor), rtol=1e-9, atol=1e-9)
    # the official code's variant: SM(0.95 P + 0.05 I, v) = inv(inv(0.95 P + 0.05 I) + v v^T)
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    blended = 0.95 * inverse + 0.05 * torch.eye(d, dtype=torch.float64)
    assert torch.allclose(code_sm_update(inverse, v), torch.linalg.inv(torch.linalg.inv(blended) + torch.outer(v, v)))


def test_mkor_hooks_record_batch_means_and_precondition() -> None:
    """The global hook finds the Linear layers from their weights; r equals the bias gradient
    (sum over the batch of dL/dy), l the bias-augmented input mean; the update is the rescaled
    R^{-1} grad L^{-1}; evaluation under no_grad records nothing."""
    net = _mlp()
    opt = MKOR(net.parameters(), lr=0.1, momentum=0.0, inv_freq=1)
    x, y = _batches(1)[0]
    with torch.no_grad():
        net(x + 100)  # evaluation pass: must not be recorded
    F.cross_entropy(net(x), y).backward()
    first = net[0]
    layer = opt.layers[id(first.weight)]
    assert len(opt.layers) == 2
    assert torch.allclose(layer.g_mean, first.bias.grad, atol=1e-6)
    assert torch.allclose(layer.a_mean, torch.cat([x.mean(0), torch.ones(1)]), atol=1e-6)
    # after one reset step the inverses are the identity; give them a non-trivial state instead
    layer.reset = False
    gen = torch.Generator().manual_seed(3)
    a_inv = torch.eye(6) + 0.1 * torch.randn(6, 6, generator=gen)
    g_inv = torch.eye(8) + 0.1 * torch.randn(8, 8, generator=gen)
    layer.a_inv, layer.g_inv = a_inv.clone(), g_inv.clone()
    opt.inv_freq = 1000  # step 0 still updates the factors: compute the expected ones the same way
    a_new = momentum_sm_update(a_inv, layer.a_mean, 0.95)
    g_new = momentum_sm_update(g_inv, layer.g_mean, 0.95)
    grad = torch.cat([first.weight.grad, first.bias.grad[:, None]], 1)
    update = g_new @ grad @ a_new
    scale = (first.weight.grad.norm() + first.bias.grad.norm()) / (update[:, :-1].norm() + update[:, -1].norm())
    w0, b0 = first.weight.detach().clone(), first.bias.detach().clone()
    opt.step()
    assert torch.allclose(first.weight - w0, -0.1 * scale * update[:, :-1], atol=1e-5)
    assert torch.allclose(first.bias - b0, -0.1 * scale * update[:, -1], atol=1e-5)
    opt.close()
    assert not opt._global_handle


def test_mkor_plain_step_for_non_linear_parameters() -> None:
    """A bare tensor (no Linear layer) gets exactly the base SGD-momentum step."""
    results = []
    for make in (lambda p: MKOR([p], lr=2e-3, momentum=0.9), lambda p: torch.optim.SGD([p], lr=2e-3, momentum=0.9)):
        p = torch.tensor([-1.5, 2.0], requires_grad=True)
        opt = make(p)
        for _ in range(10):
            opt.zero_grad()
            ((1 - p[0]) ** 2 + 10 * (p[1] - p[0] ** 2) ** 2).backward()
            opt.step()
        results.append(p.detach().clone())
    assert torch.isfinite(results[0]).all() and not torch.equal(results[0], torch.tensor([-1.5, 2.0]))
    assert torch.equal(results[0], results[1])


# ----------------------------------------------------------------------------- XGrad
def _train(opt_factory, steps: int = 20) -> torch.Tensor:
    net = _mlp()
    opt = opt_factory(net.parameters())
    for x, y in _batches(steps):
        if hasattr(opt, "pre_forward"):
            opt.pre_forward()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("xgrad, base, kw", [
    (XGradSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (XGradAdam, torch.optim.Adam, {"lr": 1e-2}),
    (XGradAdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
])
def test_xgrad_zero_steps_ahead_is_base_bit_for_bit(xgrad, base, kw) -> None:
    ours = _train(lambda p: xgrad(p, steps_ahead=0, **kw))
    assert torch.equal(ours, _train(lambda p: base(p, **kw)))
    assert not torch.equal(_train(lambda p: xgrad(p, steps_ahead=1, **kw)), ours)  # s=1 does change the run


def test_xgrad_gradient_at_predicted_weights() -> None:
    """f(x) = 1/2 sum h x^2: the second step's gradient is h * (x_1 - s lr m_hat/(sqrt(v_hat)+eps))."""
    h = torch.tensor([1.0, 4.0])
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = XGradAdam([x], lr=0.1, steps_ahead=2)
    seen = []
    for _ in range(2):
        opt.pre_forward()
        seen.append(x.detach().clone())
        opt.zero_grad()
        (0.5 * (h * x ** 2).sum()).backward()
        opt.step()
    # step 1 from x0 = (1, -2): Adam's first step is -lr * sign(g) (m_hat / sqrt(v_hat) = sign)
    x1 = torch.tensor([1.0, -2.0]) - 0.1 * torch.sign(torch.tensor([1.0, -8.0]))
    direction = torch.sign(torch.tensor([1.0, -8.0])) * (1 / (1 + 1e-8))
    assert torch.allclose(seen[0], torch.tensor([1.0, -2.0]))  # no state yet: no prediction
    assert torch.allclose(seen[1], x1 - 2 * 0.1 * direction, atol=1e-6)


def test_registry_builds_new_optimizers() -> None:
    params = list(_mlp().parameters())
    for name in ("mfac", "mkor", "xgrad_sgdm", "xgrad_adam", "xgrad_adamw", "lion_k"):
        opt = get_optimizer(name).build(params, 1e-3)
        assert isinstance(opt, torch.optim.Optimizer), name
        getattr(opt, "close", lambda: None)()


# ----------------------------------------------------------------------------- Lion-K
def test_box_metrics_on_hand_made_trajectory() -> None:
    lam = 2.0  # box ||x||_inf <= 0.5
    norms = [1.5, 1.2, 0.9, 0.5, 0.45, 0.5, 0.3]  # lambda * norms: 3, 2.4, 1.8, 1.0, 0.9, 1.0, 0.6
    lrs = [0.1] * 6
    out = box_metrics(norms, lam, lrs)
    assert out["box_entry_step"] == 3
    assert out["max_abs_weight_times_lambda"] == pytest.approx(1.0)  # max of 1.0, 0.9, 1.0, 0.6
    assert out["initial_abs_weight_times_lambda"] == pytest.approx(3.0)
    assert out["final_abs_weight_times_lambda"] == pytest.approx(0.6)
    assert out["box_excess_final"] == 0.0
    assert out["box_excess_bound"] == pytest.approx(2.0 * 0.8 ** 6)  # e0 = 2, factor 1 - 0.1*2
    leaving = box_metrics([0.4, 0.6, 0.3], lam, [0.1, 0.1])  # enters at 0, leaves at 1: max 1.2
    assert leaving["box_entry_step"] == 0 and leaving["max_abs_weight_times_lambda"] == pytest.approx(1.2)
    never = box_metrics([1.0, 0.9], lam, [0.1])
    assert math.isinf(never["box_entry_step"]) and math.isnan(never["max_abs_weight_times_lambda"])
    assert never["box_excess_final"] == pytest.approx(0.8)


def test_lion_k_records_box_along_a_run() -> None:
    """Lion with lambda = 10 from weights outside the box: the recorded norms are the run's, the
    excess never beats the geometric bound, and after entry lambda ||x||_inf stays <= 1."""
    net = _mlp()
    with torch.no_grad():
        net[0].weight.mul_(3)  # lambda ||x0||_inf > 1
    opt = get_optimizer("lion_k").build(list(net.parameters()), 0.01, weight_decay=10.0)
    for x, y in _batches(60):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    out = opt.run_metrics()
    final = max(p.detach().abs().max().item() for p in net.parameters())
    assert out["final_abs_weight_times_lambda"] == pytest.approx(10 * final)
    assert out["initial_abs_weight_times_lambda"] > 1
    assert out["box_excess_final"] <= out["box_excess_bound"] + 1e-6
    assert out["box_entry_step"] < 60 and out["max_abs_weight_times_lambda"] <= 1 + 1e-6


# ----------------------------------------------------------------------------- Lion-K's Lyapunov function
def test_lion_k_lyapunov_equals_hand_computation() -> None:
    """H = f + c (||m||_1 - lambda m^T x) inside the box, +inf outside, c = eps b1 / (eps lam (1-b1) + 1-b2);
    and the optimizer's record, from one real step on a 2-parameter quadratic, matches it by hand."""
    from flowrepro.optim.lion_k import lyapunov_coefficient, lyapunov_h, lyapunov_metrics

    lam, eps, betas = 2.0, 0.1, (0.9, 0.99)
    assert lyapunov_coefficient(eps, lam, betas) == pytest.approx(0.09 / (0.02 + 0.01))  # = 3
    x, m = [0.3, -0.2], [0.5, -1.0]  # lambda ||x||_inf = 0.6: inside; ||m||_1 = 1.5, m^T x = 0.35
    assert lyapunov_h(1.5, x, m, lam, eps, betas) == pytest.approx(1.5 + 3 * (1.5 - 2 * 0.35))  # 3.9
    assert math.isinf(lyapunov_h(1.5, [0.6, 0.0], m, lam, eps, betas))  # lambda ||x||_inf = 1.2

    a, b = torch.tensor([1.0, 3.0], dtype=torch.float64), torch.tensor([0.2, -0.4], dtype=torch.float64)
    x0 = torch.tensor([0.2, -0.1], dtype=torch.float64)
    w = x0.clone().requires_grad_(True)
    f = lambda v: 0.5 * (a * v * v).sum() - (b * v).sum()
    opt = get_optimizer("lion_k").build([w], eps, weight_decay=lam)
    for _ in range(2):
        opt.zero_grad()
        loss = f(w)
        loss.backward()
        opt.observe_loss(loss.detach())
        opt.step()
    g0 = a * x0 - b
    x1 = (1 - eps * lam) * x0 - eps * torch.sign(g0)  # first step: exp_avg = 0, update sign((1-b1) g0)
    e1 = (1 - betas[1]) * g0  # torch's exp_avg; the paper's m_1 = -e1
    h0 = f(x0).item()  # m_0 = 0
    h1 = f(x1).item() + 3 * (e1.abs().sum().item() + lam * torch.dot(e1, x1).item())
    assert opt.lyapunov == pytest.approx([h0, h1], rel=1e-12)
    assert lyapunov_h(f(x1).item(), x1, -e1, lam, eps, betas) == pytest.approx(h1, rel=1e-12)
    out = lyapunov_metrics([5.0, 4.0, 4.5, 3.0, math.inf], burn_in=0)
    assert out["lyapunov_increases"] == pytest.approx(1 / 3) and out["lyapunov_drop"] == pytest.approx(0.4)
    assert out["lyapunov_finite_fraction"] == pytest.approx(0.8)


def _lion_k_quadratic(lr: float, lam: float, b_scale: float, steps: int, sign: float = 1.0):
    """Full-gradient Lion-K (the suite's lion_k, float64) on f = x^T A x / 2 - b^T x, d = 6, started
    inside the box. Returns (H_t with m = -sign * exp_avg, (L/2) ||x_{t+1} - x_t||^2, L)."""
    from flowrepro.optim.lion_k import lyapunov_h

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = q @ q.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    b = b_scale * torch.randn(6, generator=gen, dtype=torch.float64)
    lip = torch.linalg.eigvalsh(a).max().item()
    w = ((torch.rand(6, generator=gen, dtype=torch.float64) * 2 - 1) * 0.9 / lam).requires_grad_(True)
    opt = get_optimizer("lion_k").build([w], lr, weight_decay=lam)
    h, allowance = [], []
    for _ in range(steps):
        x = w.detach().clone()
        opt.zero_grad()
        loss = 0.5 * w @ a @ w - b @ w
        loss.backward()
        e = opt.state[w].get("exp_avg", torch.zeros_like(x)) if w in opt.state else torch.zeros_like(x)
        h.append(lyapunov_h(loss.item(), x, -sign * e, lam, lr, (0.9, 0.99)))
        opt.observe_loss(loss.detach())  # as the runner does: the optimizer records its own H
        opt.step()
        allowance.append(0.5 * lip * ((w.detach() - x) ** 2).sum().item())
    if sign > 0:
        assert opt.lyapunov == pytest.approx(h, rel=1e-12, abs=1e-12)
    return h, allowance, lip


def test_lion_k_lyapunov_decreases_on_convex_quadratic() -> None:
    """Theorem 4.1's H along Lion-K's iterates: (a) constrained optimum on the box boundary, small lr:
    non-increasing at every step (to float64 rounding) and the recorded H is the same; (b) interior
    optimum: Lion chatters around it, H rises on some steps (the larger the lr, the more), but never
    by more than the theorem's (L/2)||x_{t+1} - x_t||^2; (c) with the momentum's sign flipped (torch's
    exp_avg taken as the paper's m) that bound breaks: the sign convention is what the theorem needs."""
    from flowrepro.optim.lion_k import lyapunov_metrics

    h, _, _ = _lion_k_quadratic(lr=0.01, lam=2.0, b_scale=3.0, steps=400)  # box-active optimum
    steps = [h[t + 1] - h[t] for t in range(len(h) - 1)]
    assert all(math.isfinite(v) for v in h)
    assert max(steps) <= 1e-12 and h[-1] < h[0] - 0.1
    assert lyapunov_metrics(h)["lyapunov_increases"] == 0.0

    for lr in (0.003, 0.1):  # interior optimum: rises, within the O(L eps^2) allowance
        h, allow, _ = _lion_k_quadratic(lr=lr, lam=0.5, b_scale=0.3, steps=1500)
        rises = [h[t + 1] - h[t] - allow[t] for t in range(len(h) - 1)]
        assert max(rises) <= 1e-12
        assert max(h[t + 1] - h[t] for t in range(len(h) - 1)) > 1e-9  # plain monotonicity would fail
    wrong, allow, _ = _lion_k_quadratic(lr=0.01, lam=2.0, b_scale=3.0, steps=400, sign=-1.0)
    assert max(wrong[t + 1] - wrong[t] - allow[t] for t in range(len(wrong) - 1)) > 1e-4


def test_one_optimizer_runs_under_two_labels_with_its_own_rows(tmp_path):
    """lion_k at two lambdas: the second entry's rows carry its label, and a repeated name without one is refused."""
    import pandas as pd

    from flowrepro.optim.experiment import _optimizer_entries, run_optimizer_experiment

    experiment = {"id": "labels", "problems": [{"name": "quadratic", "steps": 5, "log_every": 5}], "lr_grid": [0.01],
                  "optimizers": [{"name": "lion_k", "kwargs": {"weight_decay": 10.0}},
                                 {"name": "lion_k", "label": "lion_k_lambda1", "kwargs": {"weight_decay": 1.0}}]}
    run_optimizer_experiment(experiment, {"seeds": [0], "scale": "tiny"}, str(tmp_path / "metrics.csv"))
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert set(rows["method"].dropna()) >= {"lion_k", "lion_k_lambda1"}
    finals = rows[rows["metric"] == "max_abs_weight_times_lambda"].set_index("method")["value"]
    assert finals["lion_k"] != finals["lion_k_lambda1"]  # each ran with its own kwargs
    with pytest.raises(ValueError, match="appears twice"):
        _optimizer_entries({"optimizers": ["adam", {"name": "adam"}], "lr_grid": [0.1]})
