"""straightness vs arc_chord_gap: the first counts varying speed as curvature, the second only the shape."""
from __future__ import annotations

import math

import numpy as np
import pytest

from flowrepro.metrics.flow import arc_chord_gap, straightness


def straight_path(progress: np.ndarray, n: int = 64, dim: int = 3, seed: int = 0) -> np.ndarray:
    """x_t = x0 + (x1 - x0) p(t) for a monotone p: (K+1, n, dim), straight lines at speed p'(t)."""
    rng = np.random.default_rng(seed)
    x0, x1 = rng.standard_normal((n, dim)), rng.standard_normal((n, dim))
    return x0[None] + (x1 - x0)[None] * progress[:, None, None]


def test_straight_path_at_varying_speed_is_curved_for_straightness_only():
    times = np.linspace(0.0, 1.0, 101)
    h = 0.2  # constant-acceleration flow: x_t = x0 + (x1 - x0)(h t + (1 - h) t^2)
    trajectory = straight_path(h * times + (1 - h) * times**2)
    assert straightness(trajectory, times) > 0.1
    assert arc_chord_gap(trajectory) < 1e-9


def test_semicircle_gap_is_one_minus_two_over_pi():
    angles = np.linspace(0.0, math.pi, 20001)
    trajectory = np.stack([np.cos(angles), np.sin(angles)], axis=-1)[:, None, :]  # (K+1, 1, 2)
    # chord 2, arc pi (the polyline's arc is a hair shorter)
    assert arc_chord_gap(trajectory) == pytest.approx(1 - 2 / math.pi, abs=1e-3)


def test_a_sample_that_does_not_move_counts_zero():
    moving = straight_path(np.linspace(0.0, 1.0, 11), n=1)
    still = np.zeros_like(moving)
    with np.errstate(all="raise"):  # no 0/0 along the way
        assert arc_chord_gap(still) == 0.0
        both = arc_chord_gap(np.concatenate([moving, still], axis=1))
    assert both == pytest.approx(0.0, abs=1e-12) and not math.isnan(both)


def test_constant_speed_straight_path_is_zero_for_both():
    times = np.linspace(0.0, 1.0, 33)
    trajectory = straight_path(times)
    assert straightness(trajectory, times) == pytest.approx(0.0, abs=1e-12)
    assert arc_chord_gap(trajectory) == pytest.approx(0.0, abs=1e-12)


def test_gap_is_in_unit_interval_and_one_for_a_round_trip():
    there_and_back = np.array([0.0, 0.5, 1.0, 0.5, 0.0])[:, None, None] * np.ones((1, 4, 2))
    assert arc_chord_gap(there_and_back) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    walk = rng.standard_normal((20, 50, 5)).cumsum(0)
    assert 0.0 <= arc_chord_gap(walk) <= 1.0
