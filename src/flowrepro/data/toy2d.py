"""2-D toy targets: moons, 8 gaussians, checkerboard, spirals.

Each generator is ``f(n, rng) -> (n, 2) float32 array``, roughly centred and of unit scale,
registered in :data:`flowrepro.registry.DATASETS` under its name.
"""
from __future__ import annotations

import numpy as np

from flowrepro.registry import DATASETS


@DATASETS.register("moons")
def moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved half circles with Gaussian noise 0.05, shifted to mean ~0."""
    n_upper = n // 2
    theta = rng.uniform(0.0, np.pi, size=n)
    upper = np.arange(n) < n_upper
    x = np.where(upper, np.cos(theta), 1.0 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    points = np.stack([x - 0.5, y - 0.25], axis=1) * 1.5
    points += rng.normal(scale=0.05 * 1.5, size=points.shape)
    return rng.permutation(points).astype(np.float32)


@DATASETS.register("8gaussians")
def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight Gaussians (std 0.1 after scaling) evenly placed on a circle of radius 2."""
    angles = 2 * np.pi * rng.integers(0, 8, size=n) / 8
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centres + rng.normal(scale=0.1, size=(n, 2))).astype(np.float32)


@DATASETS.register("checkerboard")
def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 black squares of a 4x4 board spanning [-2, 2]^2."""
    x1 = rng.uniform(-2, 2, size=n)
    x2_ = rng.uniform(0, 1, size=n) - rng.integers(0, 2, size=n) * 2
    x2 = x2_ + (np.floor(x1) % 2)
    return np.stack([x1, x2], axis=1).astype(np.float32)


@DATASETS.register("spirals")
def spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved spirals r = theta, scaled into about [-2, 2]^2, noise 0.05."""
    theta = np.sqrt(rng.uniform(0, 1, size=n)) * 3 * np.pi
    sign = np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0)
    r = theta / (3 * np.pi) * 2
    points = sign[:, None] * np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return (points + rng.normal(scale=0.05, size=points.shape)).astype(np.float32)
