"""Learned forward coupling: a flow trained jointly with an encoder q_phi(z | x1) (Lee, Kim & Ye,
"Minimizing Trajectory Curvature of ODE-based Generative Models", ICML 2023).

Instead of pairing each data point x1 with independent noise, an encoder picks its noise:
q_phi(z | x1) = N(mu(x1), diag sigma^2(x1)), z = mu + sigma * eps with eps ~ N(0, I). The flow is
trained on the straight path between z (t = 0) and x1 (t = 1), jointly with the encoder:

    L = E_{x1, eps, t} || v_theta(x_t, t) - (x1 - z) ||^2 + beta KL(q_phi(z | x1) || N(0, I)),
    x_t = (1 - t) z + t x1,
    KL = 1/2 sum_d (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2)   (per sample, summed over dimensions).

A time-conditioned beta-VAE: a large beta keeps the aggregate of q_phi(z | x1) close to N(0, I), so
sampling starts from N(0, I) with the flow alone (the encoder is dropped, as the official README says).

Convention: the official code (sangyun884/fast-ode) has t = 0 data, t = 1 noise and the target
z - x; ours is t = 0 noise, t = 1 data and x1 - z: the same line traversed the other way.

Scale of beta: the official flow loss is the squared error averaged over dimensions plus beta times
the batch-mean KL divided by the dimension (utils.get_kl, get_kl_2d). Our ``mse`` sums over
dimensions, so the KL here is summed over dimensions too: both terms are the official ones times D,
and the same beta gives the same trade-off.

The reparameterisation noise eps is the coupling's x0 (``coupling: independent`` draws it from
N(0, I) with the training loop's generator), so a resumed run draws the same eps as an
uninterrupted one.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from flowrepro import pieces
from flowrepro.registry import OBJECTIVES


def gaussian_kl(mu, logvar):
    """Batch mean of KL(N(mu, diag exp(logvar)) || N(0, I)), summed over each sample's dimensions."""
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)  # float32 under bf16 autocast
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()


def encoder_network(shape: tuple[int, ...], settings: dict, build_network: Callable):
    """The encoder x1 -> (mu, logvar): the flow's own kind of network with 2x its outputs, fed t = 1
    (the official forward_model gets t = 1 too).

    Vectors: the flow's MLP (width, depth) with a last layer of 2 d outputs, as the official 2-D
    forward_model (the flow's MLP with output_dim 4). Images: the official encoder is the decoder's
    UNet family at a quarter of its width and half its blocks per level (configs/cifar10_en.json
    model_channels 32, num_blocks 2 vs cifar10_de.json 128, 4) with 2C output channels; ours is the
    flow's UNet preset scaled the same way (at least 8 channels per level).
    """
    from torch import nn

    if len(shape) == 1:
        network = build_network(shape, settings)
        last = network.net[-1]
        network.net[-1] = nn.Linear(last.in_features, 2 * shape[0])
        return network
    from flowrepro.models.unet import resolve_network

    preset = resolve_network(settings["network"])
    channels = tuple(max(8, c // 4) for c in preset.channels)
    groups = min(preset.norm_groups, min(channels)) if preset.norm_groups else None
    small = replace(preset, channels=channels, layers_per_block=max(1, preset.layers_per_block // 2),
                    norm_groups=groups, parameters_m=None)
    network = build_network(shape, {**settings, "network": small})
    out = network.unet.conv_out
    network.unet.conv_out = nn.Conv2d(out.in_channels, 2 * shape[0], kernel_size=out.kernel_size, padding=out.padding)
    return network


def _module():
    import torch
    from torch import nn

    class EncoderFlow(nn.Module):
        """The flow network ``flow`` (what samplers call) and the encoder ``encoder``, trained together.

        ``forward(x, t)`` is the flow's velocity. ``forward(x1, t, noise=eps, path=path)`` is one
        training pass (a single call, so DistributedDataParallel sees one forward per step):
        (v_theta(x_t, t), target velocity, mu, logvar) with z = mu + exp(logvar / 2) eps.
        """

        def __init__(self, flow: nn.Module, encoder: nn.Module) -> None:
            super().__init__()
            self.flow, self.encoder = flow, encoder

        def encode(self, x1):
            out = self.encoder(x1, torch.ones(x1.shape[0], device=x1.device, dtype=x1.dtype))
            mu, logvar = out.chunk(2, dim=1)  # the official split: first half mu, second half logvar
            return mu, logvar

        def forward(self, x, t, noise=None, path=None):
            if noise is None:
                return self.flow(x, t)
            mu, logvar = self.encode(x)
            z = mu + torch.exp(0.5 * logvar) * noise
            return self.flow(path.sample(z, x, t), t), path.velocity(z, x, t), mu, logvar

    return EncoderFlow


def build_encoder_flow(shape: tuple[int, ...], settings: dict, spec: dict, build_network: Callable):
    """``network`` hook: the flow network beside its encoder (:func:`encoder_network`)."""
    return _module()(build_network(shape, settings), encoder_network(shape, settings, build_network))


def velocity_field(network, path, spec: dict):
    """``field`` hook: the flow network alone; sampling starts from N(0, I) as in the paper."""
    from flowrepro.generative.parameterization import VelocityModel

    return VelocityModel(network.flow, path)


@OBJECTIVES.register("learned_coupling")
def learned_coupling(spec: dict, path, loss_fn: Callable, teacher, beta: float = 10.0) -> Callable:
    """loss_fn(v(x_t, t), x1 - z) + beta KL(q(z | x1) || N(0, I)); beta 10 is the official default
    (train_reverse_2d_joint.py and train_reverse_img_ddp.py ``--weight_prior``)."""
    if pieces.name_of(spec.get("coupling", "independent")) != "independent":
        raise ValueError("objective learned_coupling needs coupling: independent (its x0 is the encoder's noise eps)")
    if spec.get("prediction", "velocity") != "velocity":
        raise ValueError("objective learned_coupling trains a velocity field (prediction: velocity)")

    def objective(model, x0, x1, t, target_model=None):
        velocity, target, mu, logvar = model(x1, t, noise=x0, path=path)
        return loss_fn(velocity, target) + beta * gaussian_kl(mu, logvar)

    return objective


learned_coupling.network = build_encoder_flow
learned_coupling.field = velocity_field
