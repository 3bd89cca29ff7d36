"""Couplings: how a training batch pairs source noise x0 with data x1.

``independent`` draws x0 ~ N(0, I) beside each x1. ``reflow`` uses fixed (x0, x1) pairs made
by integrating a trained model's ODE from x0 (Liu et al., rectified flow): training on them
straightens the flow.
"""
from __future__ import annotations

from flowrepro.registry import COUPLINGS


@COUPLINGS.register("independent")
def independent(data, batch_size: int, generator):
    """x1 drawn uniformly from ``data`` (with replacement), x0 fresh Gaussian noise."""
    import torch

    index = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=data.device)
    x1 = data[index]
    return torch.randn(x1.shape, generator=generator, device=data.device, dtype=x1.dtype), x1


@COUPLINGS.register("reflow")
def reflow(pairs, batch_size: int, generator):
    """A batch of stored (x0, x1) pairs; ``pairs`` is a (2, n, ...) tensor."""
    import torch

    index = torch.randint(0, pairs.shape[1], (batch_size,), generator=generator, device=pairs.device)
    return pairs[0, index], pairs[1, index]


@COUPLINGS.register("minibatch_ot")
def minibatch_ot(data, batch_size: int, generator):
    """Independent draws, then x0 re-paired with x1 by the exact OT plan of the batch.

    Multisample Flow Matching (Pooladian et al.) / OT-CFM: with uniform weights and equal batch
    sizes the optimal plan of ``ot.emd`` on squared distances is a permutation.
    """
    import numpy as np
    import ot
    import torch

    x0, x1 = independent(data, batch_size, generator)
    cost = torch.cdist(x0.flatten(1), x1.flatten(1)).pow(2).double().cpu().numpy()
    weights = np.full(batch_size, 1.0 / batch_size)
    plan = ot.emd(weights, weights, cost)
    return x0[torch.as_tensor(plan.argmax(axis=0), device=x0.device)], x1
