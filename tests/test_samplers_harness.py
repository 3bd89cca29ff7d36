"""The exact sampler harness: closed-form models, diffusers adapter, NFE counts, schedules."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flowrepro.data.gmm import mixture  # noqa: E402
from flowrepro.samplers import diffusion as D  # noqa: E402
from flowrepro.samplers.nfe import NFECounter  # noqa: E402
from flowrepro.samplers.ode import integrate_dopri5, integrate_fixed  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),  # diffusers' own
              pytest.mark.usefixtures("one_torch_thread")]  # many tiny ops: one thread is faster and deterministic


@pytest.fixture(scope="module")
def gmm2d():
    gmm = mixture("gmm2d")
    return gmm, D.ExactMixture(gmm)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _err(x, y) -> float:
    return float((x - y).norm(dim=-1).mean())


def test_exact_mixture_matches_gmm_module(gmm2d, noise):
    gmm, exact = gmm2d
    for t in (0.0, 0.3, 0.9, 1.0):
        tt = torch.full((len(noise),), t, dtype=torch.float64)
        assert torch.allclose(exact.velocity(2 * noise, tt), gmm.velocity(2 * noise, tt), atol=1e-10)
    for s in (0.05, 1.0, 50.0):
        assert torch.allclose(exact.eps(noise, s), D.exact_eps(gmm, noise, s), atol=1e-10)


def test_eps_and_velocity_are_the_posterior_means():
    """eps and velocity compute only the combination they return: E[x0 | x] and E[x1 | x] - E[x0 | x]."""
    exact = D.ExactMixture(mixture("gmm16d"))
    x = 3 * torch.randn(200, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (0.0, 0.3, 1.0):
        e_x1, e_x0 = exact.posterior(x, t, 1.0 - t)
        assert torch.allclose(exact.velocity(x, t), e_x1 - e_x0, rtol=0, atol=1e-12)
    alpha, sigma = D.vp_alpha_sigma(0.7)
    assert torch.allclose(exact.eps(x, 0.7), exact.posterior(x, alpha, sigma)[1], rtol=0, atol=1e-12)


def test_vp_eps_matches_monte_carlo(gmm2d):
    """eps*(x) = (x - alpha E[x1 | x]) / sigma; E[x1 | x] by self-normalised sampling of x1 ~ p_data."""
    gmm, exact = gmm2d
    x1 = torch.as_tensor(gmm.sample(400_000, np.random.default_rng(1)), dtype=torch.float64)
    for s in (0.7, 1.5):
        alpha, sigma = D.vp_alpha_sigma(s)
        x = torch.tensor([[1.0, 0.5], [-2.0, 1.0], [0.0, -2.5]], dtype=torch.float64)
        logw = -((x[:, None, :] - alpha * x1[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = torch.softmax(logw, dim=1)
        mc = (x - alpha * (w @ x1)) / sigma
        assert torch.allclose(exact.eps(x, s), mc, atol=0.02), (exact.eps(x, s), mc)


@pytest.mark.parametrize("method, order, steps", [("euler", 1, (64, 128)), ("heun", 2, (32, 64)), ("rk4", 4, (16, 32))])
def test_observed_convergence_order(gmm2d, noise, method, order, steps):
    _, exact = gmm2d
    ref = integrate_dopri5(exact.velocity, noise, rtol=1e-11, atol=1e-11)
    errors = [_err(integrate_fixed(exact.velocity, noise, np.linspace(0, 1, k + 1), method), ref) for k in steps]
    observed = math.log(errors[0] / errors[1]) / math.log(steps[1] / steps[0])
    assert abs(observed - order) < 0.3, (method, errors, observed)


def test_ddim_and_euler_discrete_agree(gmm2d, noise):
    _, exact = gmm2d
    for steps in (5, 10, 20):
        a, _ = D.run_scheduler(exact.eps, noise, "ddim", steps)
        b, _ = D.run_scheduler(exact.eps, noise, "euler_discrete", steps)
        # same ODE step; diffusers keeps sigmas in float32, so agreement is to ~1e-5 of |x| ~ 3,
        # four orders below the solver error itself (0.1 at 10 steps)
        assert float((a - b).abs().max()) < 5e-5, steps


def test_time_shift_with_zero_window_is_ddim(gmm2d, noise):
    from flowrepro.samplers.time_shift import ddim_time_shift

    _, exact = gmm2d
    a, _ = D.run_scheduler(exact.eps, noise, "ddim", 10)
    b, _ = ddim_time_shift(exact.eps, noise, 10, data_var=1.0, window=0)
    assert float((a - b).abs().max()) < 1e-5


def test_time_shift_follows_the_official_rule(gmm2d, noise):
    """TS-DPM's rule: the model sees only the nominal DDIM levels, each sample lands on the step
    whose noise variance 1 - alphabar is nearest its own variance, and nothing shifts below the cutoff."""
    import math

    import torch

    from flowrepro.samplers.diffusion import training_alphas_cumprod
    from flowrepro.samplers.time_shift import ddim_time_shift, shifted_landing

    _, exact = gmm2d
    seen = {"ddim": [], "ts": []}

    def recording(name):
        def eps(x, s):
            seen[name].append(round(float(s), 9))
            return exact.eps(x, s)
        return eps

    plain, _ = ddim_time_shift(recording("ddim"), noise, 10, window=0)
    shifted, _ = ddim_time_shift(recording("ts"), noise, 10, window=30, cutoff=300)
    assert seen["ts"] == seen["ddim"]  # the network is evaluated at the nominal times only
    assert float((plain - shifted).abs().max()) > 1e-3  # and yet the landing times moved
    same, _ = ddim_time_shift(exact.eps, noise, 10, window=30, cutoff=999)  # cutoff above every step: DDIM
    assert float((plain - same).abs().max()) < 1e-6

    noise_var = 1.0 - training_alphas_cumprod()
    x = torch.stack([torch.full((64,), 0.0), torch.randn(64, generator=torch.Generator().manual_seed(0)) * math.sqrt(noise_var[500])])
    landing = shifted_landing(x, 500, 30, noise_var)
    assert int(landing[0]) == 485  # zero variance: the least noisy step of the window [485, 515]
    variance = float(x[1].var())
    best = min(range(485, 516), key=lambda k: abs(noise_var[k] - variance))
    assert int(landing[1]) == best  # each sample its own step


def test_nfe_counts_are_real_calls(gmm2d, noise):
    _, exact = gmm2d
    model = NFECounter(exact.eps)
    for steps, calls in ((5, 14), (10, 19)):  # PNDM: Runge-Kutta warm-up, DESIGN.md
        D.run_scheduler(model, noise, "pndm", steps)
        assert model.reset() == calls
    for steps in (3, 10):  # Heun: 2K - 1
        D.run_scheduler(model, noise, "heun_discrete", steps)
        assert model.reset() == 2 * steps - 1
    D.run_scheduler(model, noise, "dpmsolver++2m", 7)
    assert model.reset() == 7


def test_dpmsolver2_error_falls_with_nfe(gmm2d, noise):
    _, exact = gmm2d
    ref = D.reference_endpoint(exact, noise, _first_level(), [0.0])[0.0]
    errors = [_err(D.run_scheduler(exact.eps, noise, "dpmsolver++2m", k)[0], ref) for k in (5, 10, 20, 50)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.02


def _first_level() -> float:
    scheduler = D.make_scheduler("ddim")
    acp = float(scheduler.alphas_cumprod[-1])
    return math.sqrt((1 - acp) / acp)


def test_reference_starts_where_schedulers_start(gmm2d, noise):
    _, exact = gmm2d
    _, (first, final) = D.run_scheduler(exact.eps, noise, "dpmsolver++2m", 4)
    assert first == pytest.approx(_first_level(), rel=1e-5) and final == 0.0


def test_bellman_schedule_beats_uniform():
    """On the 16-d mixture BOSS beats uniform Euler steps at K = 4 and 10; on any target its summed
    local cost is at most uniform's whenever uniform lies on the fine grid (DP optimality)."""
    from flowrepro.samplers.schedules_extra import bellman_costs, bellman_schedules

    gmm = mixture("gmm16d")
    exact = D.ExactMixture(gmm)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(128, gmm.dim, dtype=torch.float64, generator=gen)
    x = torch.randn(200, gmm.dim, dtype=torch.float64, generator=gen)
    fine, cost = bellman_costs(exact.velocity, batch, n_fine=40, substeps=2)
    grids = bellman_schedules(fine, cost, 10)
    ref = integrate_dopri5(exact.velocity, x, rtol=1e-8, atol=1e-8)
    for k in (4, 10):
        uniform = np.linspace(0, 1, k + 1)
        idx = np.rint(uniform * 40).astype(int)
        boss_cost = sum(cost[int(round(a * 40)), int(round(b * 40))] for a, b in zip(grids[k][:-1], grids[k][1:]))
        assert boss_cost <= sum(cost[i, j] for i, j in zip(idx[:-1], idx[1:])) + 1e-12
        e_boss = _err(integrate_fixed(exact.velocity, x, grids[k], "euler"), ref)
        e_uni = _err(integrate_fixed(exact.velocity, x, uniform, "euler"), ref)
        assert e_boss < e_uni, (k, e_boss, e_uni)


def test_bellman_cost_is_the_mean_squared_one_step_error():
    """BOSS's cost c(i, j) (official get_bellman_disc): squared L2 of one Euler jump against the reference
    trajectory, summed over a sample's dimensions, averaged over samples; hand-computed for dx/dt = x
    on the grid 0, 1/2, 1 with samples (1, 0) and (2, 2), so E||x0||^2 = (1 + 8) / 2 = 4.5."""
    from flowrepro.samplers.schedules_extra import bellman_costs

    def velocity(x, t):
        assert t.shape == (len(x),)
        return x

    x0 = torch.tensor([[1.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    m2 = 4.5
    # official reference: the fine Euler path, x(1/2) = 1.5 x0, x(1) = 2.25 x0; Euler jumps are exact on it
    # except 0 -> 1: 2 x0 against 2.25 x0, error 0.25 x0, squared 0.0625 * 4.5.
    fine, cost = bellman_costs(velocity, x0, n_fine=2, reference="euler")
    inf = np.inf
    expected = np.array([[inf, 0.0, 0.0625 * m2], [inf, inf, 0.0], [inf, inf, inf]])
    np.testing.assert_allclose(fine, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(cost, expected, rtol=1e-12, atol=1e-15)
    # ours: RK4 reference, one step per fine interval: x(1/2) = g x0, x(1) = g^2 x0,
    # g = 1 + h + h^2/2 + h^3/6 + h^4/24 with h = 1/2
    g = 1 + 0.5 + 0.5 ** 2 / 2 + 0.5 ** 3 / 6 + 0.5 ** 4 / 24
    expected = np.array([[inf, (g - 1.5) ** 2 * m2, (g * g - 2.0) ** 2 * m2],
                         [inf, inf, (g * g - 1.5 * g) ** 2 * m2], [inf, inf, inf]])
    _, cost = bellman_costs(velocity, x0, n_fine=2, substeps=1, reference="rk4")
    np.testing.assert_allclose(cost, expected, rtol=1e-12)
    # image-shaped samples: the same numbers (sum over every dimension, not the last axis only)
    _, cost_img = bellman_costs(velocity, x0.reshape(2, 1, 1, 2).expand(2, 1, 2, 2) / math.sqrt(2), n_fine=2,
                                substeps=1, reference="rk4")
    np.testing.assert_allclose(cost_img, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="reference"):
        bellman_costs(velocity, x0, n_fine=2, reference="dopri5")


def test_schedules_are_valid_grids():
    from flowrepro.samplers.schedules_extra import karras, logsnr

    for fn in (karras, logsnr):
        for k in (1, 2, 5, 20):
            grid = fn(k)
            assert len(grid) == k + 1 and grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)


def test_experiment_writes_tidy_rows_with_counted_nfe(tmp_path):
    from flowrepro.io import TIDY_COLUMNS, read_table
    from flowrepro.samplers.experiment import plot_sampler_experiment, run_sampler_experiment

    experiment = {"id": "smoke", "harness": "vp", "datasets": ["gmm2d"], "nfe": [2, 5, 15],
                  "samplers": {"ddim": {}, "pndm": {}, "heun_discrete": {}}, "metrics": ["solver_error", "mmd"]}
    out = tmp_path / "metrics.csv"
    run_sampler_experiment(experiment, {"scale": "test", "seeds": [0], "n_samples": 64, "n_eval": 64}, str(out))
    table = read_table(out)
    assert list(table.columns) == TIDY_COLUMNS
    runs = table[table["metric"] == "solver_error"]
    assert sorted(runs[runs["sampler"] == "pndm"]["nfe"]) == [15]  # K steps = K + 9 real calls; fewer than 14 cannot run
    assert sorted(runs[runs["sampler"] == "heun_discrete"]["nfe"]) == [1, 5, 15]  # the most K with 2K - 1 <= budget: K = 1, 3, 8
    files = plot_sampler_experiment(str(out), str(tmp_path / "figures"))
    assert any(f.endswith(".pdf") for f in files) and any(f.endswith("nfe_to_target.csv") for f in files)
