"""HB / GHVB momentum samplers and BDIA-DDIM on the exact harness (flowrepro.samplers.momentum, .bdia)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flowrepro.data.gmm import mixture
from flowrepro.samplers import bdia as B
from flowrepro.samplers import diffusion as D
from flowrepro.samplers import momentum as M
from flowrepro.samplers.nfe import NFECounter

warnings.filterwarnings("ignore", category=FutureWarning)
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),  # diffusers' own
              pytest.mark.usefixtures("one_torch_thread")]  # many tiny ops: one thread is faster and deterministic


@pytest.fixture(scope="module")
def exact():
    return D.ExactMixture(mixture("gmm16d"))


@pytest.fixture(scope="module")
def noise():
    return torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def data():
    return torch.as_tensor(mixture("gmm16d").sample(64, np.random.default_rng(4)), dtype=torch.float64)


def own_ddim(model, x_t, steps):
    """DDIM written independently, in VP coordinates: x' = alpha' x0_hat + sigma' eps."""
    return B.ddim_generate(model, x_t, M.ddim_levels(steps))


def test_split_order_reads_the_papers_fractional_order():
    assert M.split_order(3.8) == (4, pytest.approx(0.8))
    assert M.split_order(2.5) == (3, pytest.approx(0.5))
    assert M.split_order(4) == (4, 1.0)
    assert M.split_order(1.0) == (1, 1.0)


def test_ghvb_weights_reduce_to_adams_bashforth_and_sum_to_one():
    """At beta = 1 GHVB's mixer is PLMS's Adams-Bashforth; for any beta its weights sum to 1 (consistency)."""
    for k, (pairs, den) in M.GHVB_WEIGHTS.items():
        assert [(a + b) / den for a, b in pairs] == pytest.approx(list(M.AB_WEIGHTS[k]), abs=1e-15)
        for beta in (0.3, 0.8):
            assert sum((a + b * beta) / (den * beta) for a, b in pairs) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("steps", [4, 10])
def test_hb_and_ghvb_at_beta_one_are_plms(exact, noise, steps):
    """The paper's equivalence: HB(k, beta=1) = PLMS_k (official PLMS: Adams-Bashforth warm-up, one call per
    step; not diffusers' PNDMScheduler, whose second step re-evaluates the model). Float64 precision."""
    for k in (2, 3, 4):
        plms, _ = M.plms(exact.eps, noise, steps, order=k)
        hb, _ = M.heavy_ball(exact.eps, noise, steps, order=float(k))
        ghvb, _ = M.generalized_heavy_ball(exact.eps, noise, steps, order=float(k))
        assert float((hb - plms).abs().max()) < 1e-12, k
        assert float((ghvb - plms).abs().max()) < 1e-12, k
    # and the momentum is not a no-op below beta = 1
    plms4, _ = M.plms(exact.eps, noise, steps, order=4)
    assert float((M.heavy_ball(exact.eps, noise, steps, order=3.8)[0] - plms4).abs().max()) > 1e-4


def test_ghvb_order_one_is_ddim(exact, noise):
    """GHVB with order 1, beta 1 is DDIM: to float64 precision against DDIM written in VP coordinates, and to
    1e-5 against diffusers' DDIMScheduler (which keeps its alphas in float32)."""
    x, levels = M.generalized_heavy_ball(exact.eps, noise, 10, order=1)
    assert float((x - own_ddim(exact.eps, noise, 10)).abs().max()) < 1e-12
    ref, ref_levels = D.run_scheduler(exact.eps, noise, "ddim", 10)
    assert float((x - ref).abs().max()) < 1e-5
    assert levels == pytest.approx(ref_levels)


def test_first_order_momentum_variants_agree(exact, noise):
    """At order 1, HB and GHVB are the same recursion v_n = (1 - beta) v_{n-1} + beta e_n, y += h v_n."""
    hb, _ = M.heavy_ball(exact.eps, noise, 8, order=0.6)
    ghvb, _ = M.generalized_heavy_ball(exact.eps, noise, 8, order=0.6)
    assert float((hb - ghvb).abs().max()) < 1e-12
    assert float((hb - own_ddim(exact.eps, noise, 8)).abs().max()) > 1e-3


def test_one_model_call_per_step_at_the_ddim_levels(exact, noise):
    seen: list[float] = []

    def recording(x, s):
        seen.append(s)
        return exact.eps(x, s)

    for fn in (M.heavy_ball, M.generalized_heavy_ball, M.plms, B.bdia):
        seen.clear()
        counter = NFECounter(recording)
        fn(counter, noise, 7)
        assert counter.calls == 7, fn.__name__
        assert seen == pytest.approx(M.ddim_levels(7)[:-1]), fn.__name__
        assert fn.calls_per_step == 1


def test_ghvb_converges_at_high_order_and_hb_at_first(exact, noise):
    """Doubling 20 -> 40 steps: GHVB 3.8 (order 4) gains far more than HB 3.8 (first order)."""
    s0 = M.ddim_levels(20)[0]
    ref = D.reference_endpoint(exact, noise, s0, [0.0])[0.0]
    err = lambda fn, steps: float((fn(exact.eps, noise, steps, order=3.8)[0] - ref).norm(dim=-1).mean())
    ghvb_ratio = err(M.generalized_heavy_ball, 40) / err(M.generalized_heavy_ball, 20)
    hb_ratio = err(M.heavy_ball, 40) / err(M.heavy_ball, 20)
    assert ghvb_ratio < 0.35 < hb_ratio


def test_bdia_with_gamma_zero_is_ddim(exact, noise):
    """gamma = 0 drops the backward correction: z_{i-1} = D_{i->i-1}(z_i), DDIM (the paper's eq. and README)."""
    x, _ = B.bdia(exact.eps, noise, 10, gamma=0.0)
    assert float((x - own_ddim(exact.eps, noise, 10)).abs().max()) < 1e-12
    ref, _ = D.run_scheduler(exact.eps, noise, "ddim", 10)
    assert float((x - ref).abs().max()) < 1e-5
    assert float((B.bdia(exact.eps, noise, 10, gamma=0.5)[0] - x).abs().max()) > 1e-3


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_bdia_round_trip_is_exact(exact, data, gamma):
    """data -> (z_N, z_{N-1}) -> data to 1e-5 in float64 (it is ~1e-14), while DDIM's inversion is O(h)."""
    back = B.bdia_round_trip(exact.eps, data, 10, gamma=gamma)
    assert B.inversion_error(data, back) < 1e-5
    assert B.inversion_error(data, B.ddim_round_trip(exact.eps, data, 10)) > 0.1


def test_bdia_inverse_recovers_the_pair_of_a_forward_run(exact, noise):
    """The inverse map retraces a sampling run: from its last pair (z_1, z_0) back to (z_N, z_{N-1})."""
    levels = M.ddim_levels(6)
    z0, z1 = B.bdia_generate(exact.eps, noise, levels, 1.0)
    top, nxt = B.bdia_invert_pair(exact.eps, z1, z0, levels, 1.0)
    assert float((top - noise).abs().max()) < 1e-8
    assert float((nxt - B.ddim_move(noise, exact.eps(noise, levels[0]), levels[0], levels[1])).abs().max()) < 1e-8
    with pytest.raises(ValueError):
        B.bdia_invert(exact.eps, z0, levels, 0.0)


def test_harness_rows_for_the_new_samplers(tmp_path):
    """The experiment runner plans one call per step, passes order/gamma, labels via sampler:, and writes
    inversion_error rows for bdia and ddim only."""
    import pandas as pd

    from flowrepro.samplers.experiment import run_sampler_experiment

    experiment = {"id": "t", "harness": "vp", "datasets": ["gmm2d"], "nfe": [5],
                  "samplers": {"ddim": {}, "hb_2.5": {"sampler": "hb", "order": 2.5}, "bdia_g1": {"sampler": "bdia", "gamma": 1.0}},
                  "metrics": ["solver_error", "inversion_error"]}
    out = tmp_path / "m.csv"
    run_sampler_experiment(experiment, {"n_samples": 50, "n_eval": 50, "seeds": [0]}, str(out))
    rows = pd.read_csv(out)
    assert set(rows["sampler"]) == {"ddim", "hb_2.5", "bdia_g1"}
    assert set(rows["nfe"]) == {5}
    inv = rows[rows["metric"] == "inversion_error"].set_index("sampler")["value"]
    assert set(inv.index) == {"ddim", "bdia_g1"}
    assert inv["bdia_g1"] < 1e-10
    assert inv["ddim"] > 0.01
    err = rows[rows["metric"] == "solver_error"].set_index("sampler")["value"]
    noise = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = D.ExactMixture(mixture("gmm2d"))
    hb, levels = M.heavy_ball(exact.eps, noise, 5, order=2.5)
    ref = D.reference_endpoint(exact, noise, levels[0], [0.0])[0.0]
    assert err["hb_2.5"] == pytest.approx(float((hb - ref).norm(dim=-1).mean()), rel=1e-9)  # order 2.5 reached hb
