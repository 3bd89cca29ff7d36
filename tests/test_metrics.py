"""Sliced W2 and MMD: zero on identical sets, growing with a shift; evaluate's rows for vector data only."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowrepro.metrics.mmd import mmd_rbf
from flowrepro.metrics.sliced import sliced_wasserstein
from flowrepro.registry import METRICS
from flowrepro.stages.evaluate import quality_metrics


def test_metrics_are_registered_under_their_row_names():
    assert METRICS.get("sliced_w2") is sliced_wasserstein and METRICS.get("mmd") is mmd_rbf


@pytest.mark.parametrize("dim", [2, 5])
def test_sliced_w2_is_zero_on_itself_and_shift_over_sqrt_d_for_a_translation(dim):
    a = torch.randn(1000, dim, generator=torch.Generator().manual_seed(dim))
    assert sliced_wasserstein(a, a) == 0.0
    for size in (0.5, 2.0):
        shift = torch.full((dim,), size / math.sqrt(dim))  # |m| = size
        # a translation moves every sorted projection by theta . m: SW2^2 = mean_theta (theta . m)^2,
        # whose expectation is |m|^2 / d; 128 directions leave a few % of Monte Carlo error
        assert sliced_wasserstein(a, a + shift) == pytest.approx(size / math.sqrt(dim), rel=0.1)


def test_sliced_w2_with_unequal_sizes_and_arrays():
    a = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([1.0, -0.5], dtype=torch.float64)
    doubled = torch.cat([a, a])  # the same empirical measure, twice the points
    assert sliced_wasserstein(a, doubled) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(a, doubled + shift) == pytest.approx(sliced_wasserstein(a, a + shift), rel=1e-12)
    assert sliced_wasserstein(a.numpy(), (a + shift).numpy()) == sliced_wasserstein(a, a + shift)


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 2)), rng.standard_normal((500, 2))
    assert abs(mmd_rbf(x, x)) < 5 / len(x)  # the unbiased estimate on one set is -O(1/n)
    same, shifted = mmd_rbf(x, y), mmd_rbf(x + [1.0, 0.0], y)
    # seeds 0-14: |same| <= 0.0012, shifted >= 0.087
    assert abs(same) < 0.005 and shifted > 0.05 and shifted > 10 * abs(same)


def test_mmd_max_points_subsamples_deterministically_and_leaves_the_default_alone():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1500, 2)) + [1.0, 0.0], rng.standard_normal((1200, 2))
    full = mmd_rbf(x, y)
    assert mmd_rbf(x, y, max_points=2000) == full  # no set larger than the cap: the same computation
    capped = mmd_rbf(x, y, max_points=500)
    assert capped == mmd_rbf(x, y, max_points=500) and capped != full
    assert capped == pytest.approx(full, rel=0.35)  # same MMD^2 in expectation (~0.12), noisier: seeds 0-19 within 20 %


def test_quality_rows_vector_data_get_sliced_w2_and_mmd_images_do_not(monkeypatch):
    rng = np.random.default_rng(2)
    samples, test = rng.standard_normal((400, 2)).astype(np.float32), rng.standard_normal((400, 2)).astype(np.float32)
    values = quality_metrics(samples, "moons", test)
    assert set(values) == {"w2", "sliced_w2", "mmd"}
    assert values == quality_metrics(samples, "moons", test)  # fixed projection and subset seeds
    assert values["sliced_w2"] <= values["w2"] + 1e-9  # every 1-D projection is 1-Lipschitz: SW2 <= W2

    monkeypatch.setattr("flowrepro.metrics.fid.fid_classifier", lambda samples, classifier, stats, batch_size=1000: 1.0)
    images, test_images = rng.standard_normal((50, 1, 8, 8)), rng.standard_normal((50, 1, 8, 8))
    assert set(quality_metrics(images, "digits", test_images, "results/classifiers/digits.pt")) == {"w2", "fid_classifier"}
    with pytest.raises(KeyError, match="classifier"):
        quality_metrics(images, "digits", test_images)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_sorted_columns_match_torch_sort_exactly(dtype):
    import torch

    from flowrepro.metrics.sliced import _sorted_columns

    x = torch.randn(301, 17, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    x[::7] = x[1]  # ties
    assert torch.equal(_sorted_columns(x), torch.sort(x, dim=0).values)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_lower_median_is_torch_median(n):
    from flowrepro.metrics.mmd import _lower_median

    values = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    assert _lower_median(values) == float(values.median())
