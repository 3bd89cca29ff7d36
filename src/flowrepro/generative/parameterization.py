"""Velocity, noise (epsilon) and score parameterisations of an affine path, converted once.

For x_t = a(t) x0 + b(t) x1 with Gaussian noise x0 ~ N(0, I) and data x1, the marginal
velocity is v(x, t) = a' E[x0 | x_t = x] + b' E[x1 | x_t = x]. Writing eps = E[x0 | x_t = x]
(the denoiser's noise prediction) and using x = a eps + b E[x1 | x]:

    v = a' eps + b' (x - a eps) / b                      (eps -> velocity, needs b > 0)
    eps = (b' x - b v) / (b' a - b a')                   (velocity -> eps)
    score = grad log p_t(x) = -eps / a                    (Tweedie, needs a > 0)

The denominators vanish only at the path's endpoints; callers clip t away from them.
"""
from __future__ import annotations

from typing import Callable

from flowrepro.generative.paths import per_sample


def epsilon_to_velocity(path, x, t, epsilon):
    a, b, da, db = (per_sample(c, x) for c in path.coefficients(t))
    return da * epsilon + db * (x - a * epsilon) / b


def velocity_to_epsilon(path, x, t, velocity):
    a, b, da, db = (per_sample(c, x) for c in path.coefficients(t))
    return (db * x - b * velocity) / (db * a - b * da)


def epsilon_to_score(path, x, t, epsilon):
    return -epsilon / per_sample(path.coefficients(t)[0], x)


class AsVelocity:
    """Wrap an epsilon-predicting network so samplers see a velocity field v(x, t)."""

    def __init__(self, network: Callable, path) -> None:
        self.network, self.path = network, path

    def __call__(self, x, t):
        return epsilon_to_velocity(self.path, x, t, self.network(x, t))

    def epsilon(self, x, t):
        return self.network(x, t)

    def velocity_and_epsilon(self, x, t):
        epsilon = self.network(x, t)
        return epsilon_to_velocity(self.path, x, t, epsilon), epsilon


class VelocityModel:
    """A velocity-predicting network with the same interface (``epsilon`` by conversion)."""

    def __init__(self, network: Callable, path) -> None:
        self.network, self.path = network, path

    def __call__(self, x, t):
        return self.network(x, t)

    def epsilon(self, x, t):
        return velocity_to_epsilon(self.path, x, t, self.network(x, t))

    def velocity_and_epsilon(self, x, t):
        velocity = self.network(x, t)
        return velocity, velocity_to_epsilon(self.path, x, t, velocity)
