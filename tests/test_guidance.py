"""Classifier-free guidance on the exact harness (flowrepro.samplers.guidance) and divergence_rate
(flowrepro.metrics.divergence): each pinned to its definition by an independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowrepro.data.gmm import GaussianMixture, mixture, ring_mixture
from flowrepro.metrics.divergence import data_radius, divergence_rate
from flowrepro.samplers.diffusion import ExactMixture, exact_eps, reference_endpoint
from flowrepro.samplers.guidance import GuidedMixture, class_labels, class_mixture, guided_cases


def _batch(dim: int, n: int = 10, seed: int = 0, scale: float = 3.0):
    return scale * torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["gmm2d", "gmm16d"])
def test_scale_zero_is_unconditional_and_one_is_conditional_exactly(name):
    gmm = mixture(name)
    x = _batch(gmm.dim)
    uncond = ExactMixture(gmm).eps(x, 0.7)
    assert torch.equal(GuidedMixture(gmm, 0.0).eps(x, 0.7), uncond)
    cond = GuidedMixture(gmm, 1.0).eps(x, 0.7)
    for c in range(2):  # row i is of class i mod 2
        assert torch.equal(cond[c::2], ExactMixture(class_mixture(gmm, c)).eps(x[c::2], 0.7))
    assert class_labels(5).tolist() == [0, 1, 0, 1, 0]


def test_guided_eps_matches_independent_sub_mixture_scores():
    """gmm2d's class 0 (even components of the 8-ring) is the 4-ring; class 1 is it rotated by 45 degrees.
    Guided eps = eps_u + w (eps_c - eps_u) with each eps from the slow linear-path score (exact_eps)."""
    gmm, w, s = mixture("gmm2d"), 10.0, 0.4
    ring4 = ring_mixture(dim=2, k=4)
    turn = np.array([[math.cos(math.pi / 4), -math.sin(math.pi / 4)], [math.sin(math.pi / 4), math.cos(math.pi / 4)]])
    rotated = GaussianMixture(ring4.weights, ring4.means @ turn.T, ring4.covs)
    x = _batch(2, n=12)
    uncond = exact_eps(gmm, x, s)
    cond = torch.cat([exact_eps(ring4, x[0::2], s), exact_eps(rotated, x[1::2], s)])
    order = torch.cat([torch.arange(0, 12, 2), torch.arange(1, 12, 2)])
    expected = torch.empty_like(uncond)
    expected[order] = uncond[order] + w * (cond - uncond[order])
    torch.testing.assert_close(GuidedMixture(gmm, w).eps(x, s), expected, rtol=1e-9, atol=1e-9)


def test_class_mixture_renormalises_weights_of_its_components():
    gmm = mixture("gmm16d")
    sub = class_mixture(gmm, 1)
    np.testing.assert_allclose(sub.weights, gmm.weights[[1, 3]] / gmm.weights[[1, 3]].sum())
    np.testing.assert_array_equal(sub.means, gmm.means[[1, 3]])


def test_reference_endpoint_solves_the_guided_ode():
    """A fine fixed-step RK4 of DDIM's ODE dy/ds = eps_w(y / sqrt(1 + s^2), s) (the guided eps, not the
    velocity the reference integrates) reaches the reference endpoint at s = 0."""
    from flowrepro.samplers.momentum import ddim_levels

    model, s0 = GuidedMixture(mixture("gmm2d"), 10.0), ddim_levels(10)[0]
    x = _batch(2, n=8, seed=1, scale=1.0)
    ref = reference_endpoint(model, x, s0, [0.0])[0.0]
    f = lambda y, s: model.eps(y / math.sqrt(1 + s * s), s)  # noqa: E731
    levels = s0 * np.linspace(1, 0, 801) ** 4  # fine where the guided ODE is stiff (s -> 0)
    y = x * math.sqrt(1 + s0 * s0)
    for s, t in zip(levels[:-1], levels[1:]):
        h = t - s
        k1 = f(y, s)
        k2 = f(y + h / 2 * k1, s + h / 2)
        k3 = f(y + h / 2 * k2, s + h / 2)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(y + h * k3, t))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    assert (y - reference_endpoint(ExactMixture(model.gmm), x, s0, [0.0])[0.0]).norm(dim=-1).mean() > 0.1  # guidance matters


def test_divergence_rate_on_hand_made_samples():
    x = np.array([[0.0, 0.0], [2.9, 0.0], [0.0, -3.1], [3.0, 0.0], [np.nan, 0.0], [np.inf, 1.0]])
    assert divergence_rate(x, radius=1.0) == 3 / 6  # 3.1, nan, inf; a norm of exactly 3R has not diverged
    assert divergence_rate(x, radius=1.0, factor=1.0) == 5 / 6


def test_data_radius_is_the_norm_quantile():
    """N(0, I) in 2-D: ||x|| is Rayleigh, its 99th percentile sqrt(-2 log 0.01) = 3.035."""
    standard = GaussianMixture(np.ones(1), np.zeros((1, 2)), np.eye(2)[None])
    assert abs(data_radius(standard) - math.sqrt(-2 * math.log(0.01))) < 0.02


def test_harness_emits_guided_rows_against_the_guided_reference(tmp_path):
    from flowrepro.io import read_table
    from flowrepro.samplers.experiment import run_sampler_experiment

    experiment = {"id": "g", "harness": "vp", "datasets": ["gmm2d"], "guidance": {"scale": [10]}, "nfe": [5],
                  "samplers": {"plms4": {"sampler": "plms_ab", "order": 4}, "dopri5": {"rtol": [1e-7]}},
                  "metrics": ["solver_error", "divergence_rate"]}
    assert guided_cases(experiment) == [("gmm2d", "gmm2d", None), ("gmm2d", "gmm2d_w10", 10.0)]
    assert guided_cases({**experiment, "guidance": {"scale": 7.5, "unguided": False}}) == [("gmm2d", "gmm2d_w7.5", 7.5)]
    out = tmp_path / "metrics.csv"
    run_sampler_experiment(experiment, {"n_samples": 64, "n_eval": 32, "seeds": [0]}, str(out))
    frame = read_table(str(out))
    value = lambda d, s, m: float(frame.query("dataset == @d and sampler == @s and metric == @m")["value"].iloc[0])  # noqa: E731
    assert set(frame["dataset"]) == {"gmm2d", "gmm2d_w10"}
    assert value("gmm2d_w10", "dopri5", "solver_error") < 1e-3  # a tight solve of the guided ODE meets its reference
    assert value("gmm2d_w10", "plms4", "solver_error") > 10 * value("gmm2d", "plms4", "solver_error")
    assert 0 < value("gmm2d_w10", "plms4", "divergence_rate") <= 1 and value("gmm2d", "plms4", "divergence_rate") == 0
