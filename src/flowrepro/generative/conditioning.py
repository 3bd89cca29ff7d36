"""Class conditioning with label dropout, and classifier-free guidance when sampling.

Training (Ho & Salimans 2022; for flow matching, Guided Flows, Zheng et al. 2023): each batch's
labels y are replaced by the null class K with probability p (``label_dropout``), so one network
learns the conditional field u(x, t | y) and the unconditional u(x, t | null) together.

Sampling with guidance scale w (Guided Flows' guided field; diffusers' ``guidance_scale`` for eps):

    u_w(x, t | y) = (1 - w) u(x, t | null) + w u(x, t | y) = u_null + w (u_y - u_null)

w = 0 is the unconditional model, w = 1 the conditional one, w > 1 guided. At a fixed (x, t) the
velocity, noise and score of an affine path are affine in the network's output with coefficients
that do not depend on y, so combining outputs guides whatever the network predicts, and a sampler
that converts (``EpsilonAtLevel``: DDIM, PLMS, HB on a flow model) sees the guided eps.
A guided evaluation is one network call on the batch [x; x] with labels [y; null]: one NFE, as
diffusers' pipelines and the guidance papers count it. Sample i of a run asks for class i mod K
(:func:`class_labels`), so evaluation knows each sample's class without a label file.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def class_labels(n: int, classes: int, first_row: int = 0, device=None) -> torch.Tensor:
    """The classes rows ``first_row .. first_row + n - 1`` of a run ask for: row i is class i mod K."""
    return torch.arange(first_row, first_row + n, device=device) % classes


class ClassConditional(nn.Module):
    """``network(x, t, labels)`` seen as ``f(x, t)``: the labels come from :func:`labelled` (training)
    or :func:`guided` (sampling); with neither, the null class (the unconditional model)."""

    def __init__(self, network: nn.Module, classes: int) -> None:
        super().__init__()
        self.network, self.classes = network, classes
        self.labels: torch.Tensor | None = None   # training: this batch's labels, dropped ones = classes
        self.guidance: float | None = None        # sampling: w
        self.first_row = 0                        # sampling: the run's row of this batch's first sample

    def forward(self, x, t):
        null = torch.full((x.shape[0],), self.classes, dtype=torch.long, device=x.device)
        if self.guidance is None:
            labels = null if self.labels is None else self.labels
            if labels.shape[0] != x.shape[0]:
                raise ValueError(f"class-conditional network: {labels.shape[0]} labels for a batch of {x.shape[0]}")
            return self.network(x, t, labels)
        wanted = class_labels(x.shape[0], self.classes, self.first_row, x.device)
        if self.guidance == 0.0:
            return self.network(x, t, null)
        if self.guidance == 1.0:
            return self.network(x, t, wanted)
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        conditional, unconditional = self.network(torch.cat([x, x]), torch.cat([t, t]), torch.cat([wanted, null])).chunk(2)
        return unconditional + self.guidance * (conditional - unconditional)


def conditional_network(model) -> ClassConditional | None:
    """The :class:`ClassConditional` inside a loaded model (its field wrappers: ``network``, ``model``), if any."""
    for _ in range(4):
        if isinstance(model, ClassConditional):
            return model
        model = getattr(model, "network", None) or getattr(model, "model", None)
    return None


@contextlib.contextmanager
def labelled(network, labels: torch.Tensor | None):
    """Training: ``network``'s calls inside see ``labels`` (None: nothing to set, an unconditional model)."""
    if labels is None:
        yield
        return
    conditional = conditional_network(network)
    if conditional is None:
        raise TypeError("labelled batches for a network that is not class-conditional")
    conditional.labels = labels
    try:
        yield
    finally:
        conditional.labels = None


@contextlib.contextmanager
def guided(model, guidance: float | None, first_row: int = 0):
    """Sampling: ``model``'s calls inside are guided with scale ``guidance``, the batch's first sample
    being row ``first_row`` of the run (None: unchanged)."""
    if guidance is None:
        yield
        return
    conditional = conditional_network(model)
    if conditional is None:
        raise TypeError(f"guidance {guidance} on a model that is not class-conditional (its spec has no condition:)")
    conditional.guidance, conditional.first_row = float(guidance), first_row
    try:
        yield
    finally:
        conditional.guidance, conditional.first_row = None, 0


def labelled_independent(data, labels: torch.Tensor, batch_size: int, generator, classes: int, label_dropout: float):
    """Like ``couplings.independent`` (x1 uniform from ``data``, x0 fresh noise), plus each x1's label,
    replaced by the null class ``classes`` with probability ``label_dropout``."""
    index = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=labels.device)
    x1 = data[index]
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    drop = torch.rand(batch_size, generator=generator, device=labels.device) < label_dropout
    return x0, x1, torch.where(drop, torch.full_like(labels[index], classes), labels[index])
