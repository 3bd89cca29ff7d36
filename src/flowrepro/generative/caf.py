"""Constant Acceleration Flow (Park et al., NeurIPS 2024, arXiv:2411.00322; official code mlvlab/CAF).

Time runs from noise x0 (t = 0) to data x1 (t = 1), as in the official code. CAF moves each pair
with a constant acceleration a from an initial velocity v0:

    x_t = x0 + v0 t + a t^2 / 2,   v0 = h (x1 - x0),   a = 2 (x1 - x0 - v0),

so x_1 = x1 whatever v0, and x_t = (1 - t^2) x0 + t^2 x1 + v0 (t - t^2) (``get_train_tuple``).
Two networks, one module (:func:`caf_network`):

- the velocity net v_phi(x, t), regressed on the constant v0 = h (x1 - x0) at every point x_t of
  the path (``velocity_training_losses``); samplers use it once, at (x0, 0);
- the acceleration net a_theta(x, t, v0) on the input [x, v0] (MLP: 2d features; UNet: 2C
  channels), with *initial-velocity conditioning* (``acceleration_training_losses``): the path is
  rebuilt with v0_hat = v_phi(x0, 0) (no gradient) and the target is a* = 2 (x1 - x0) - 2 v0_hat,
  the acceleration that still reaches x1 from v0_hat.

Loss (objective ``caf``, option ``h``, default the official ``alpha`` 1.5):

    L = || v_phi(x_t, t) - h (x1 - x0) ||^2 + || a_theta(x^_t, t, v0_hat) - (2 (x1 - x0) - 2 v0_hat) ||^2

with x^_t the path of v0_hat. The official code trains the two nets in two runs (velocity first,
then acceleration against the finished velocity net's EMA); one train job here optimises the sum,
v0_hat taken from the current velocity net without gradient, so the acceleration net follows a
velocity net that is still learning (:mod:`flowrepro.samplers.caf` samples and inverts it).
"""
from __future__ import annotations

from typing import Callable

from flowrepro.generative.paths import per_sample
from flowrepro.registry import OBJECTIVES


def caf_point(x0, x1, v0, t):
    """x_t = x0 + v0 t + a t^2 / 2 with a = 2 (x1 - x0 - v0): reaches x1 at t = 1 for any v0 (t per sample)."""
    t = per_sample(t, x0)
    return x0 + v0 * t + (x1 - x0 - v0) * t**2


def build_caf_network(shape: tuple[int, ...], settings: dict, spec: dict, build_network: Callable):
    """The two networks of a CAF model: the velocity net is the scale's plain flow network (x, t);
    the acceleration net the same layout on [x, v0] (twice the input features or channels)."""
    if len(shape) == 1:
        from flowrepro.models.mlp import build_mlp

        acceleration = build_mlp(shape[0], width=settings["width"], depth=settings["depth"], in_dim=2 * shape[0])
    else:
        from flowrepro.models.unet import build_unet

        acceleration = build_unet(tuple(shape), settings["network"], in_channels=2 * shape[0])
    return caf_network(build_network(shape, settings), acceleration)


def caf_network(velocity, acceleration):
    """v_phi and a_theta in one module: ``forward(x, t)`` is v_phi(x, t), ``forward(x, t, v0)`` is
    a_theta([x, v0], t) (one forward, so a DDP or compiled wrapper sees every call)."""
    import torch
    from torch import nn

    class CAFNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.velocity, self.acceleration = velocity, acceleration

        def forward(self, x, t, v0=None):
            if v0 is None:
                return self.velocity(x, t)
            return self.acceleration(torch.cat([x, v0], dim=1), t)

    return CAFNetwork()


@OBJECTIVES.register("caf")
def caf(spec: dict, path, loss_fn: Callable, teacher, h: float = 1.5) -> Callable:
    """CAF's velocity loss plus its acceleration loss with initial-velocity conditioning (module
    docstring); ``path`` is unused: CAF's path is its own constant-acceleration curve."""
    import torch

    if not h > 0:
        raise ValueError(f"objective caf: h must be positive (the initial velocity's scale), not {h}")

    def objective(model, x0, x1, t, target_model=None):
        v0 = h * (x1 - x0)
        velocity_loss = loss_fn(model(caf_point(x0, x1, v0, t), t), v0)
        with torch.no_grad():  # v0_hat is an input of the acceleration net, never trained through it
            v0_hat = model(x0, torch.zeros_like(t))
        acceleration = model(caf_point(x0, x1, v0_hat, t), t, v0_hat)
        return velocity_loss + loss_fn(acceleration, 2 * (x1 - x0) - 2 * v0_hat)

    return objective


class CAFModel:
    """What samplers call on a trained CAF module: ``initial_velocity(x0)`` = v_phi(x0, 0), and
    ``acceleration(x, t, v0)`` = a_theta(x, t, v0); no velocity field v(x, t) to integrate."""

    is_velocity_field = False

    def __init__(self, network, path=None) -> None:
        self.network, self.path = network, path

    def initial_velocity(self, x0, t=None):
        """v_phi(x, t) at t = 0 by default (inversion reads it at the data end, t = 1)."""
        import torch

        t = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device) if t is None else t
        return self.network(x0, t)

    def acceleration(self, x, t, v0):
        return self.network(x, t, v0)

    def __call__(self, x, t):
        raise TypeError("a CAF model has no velocity field v(x, t): sample it with the caf sampler (models: [<caf model>])")


caf.network = build_caf_network
caf.field = lambda network, path, spec: CAFModel(network, path)
