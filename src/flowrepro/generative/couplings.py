"""Couplings: how a training batch pairs source noise x0 with data x1.

``independent`` draws x0 ~ N(0, I) beside each x1. ``reflow`` uses fixed (x0, x1) pairs made
by integrating a trained model's ODE from x0 (Liu et al., rectified flow): training on them
straightens the flow. ``minibatch_ot`` re-pairs each batch by its exact OT plan;
``minibatch_sinkhorn`` samples the pairs from the entropic (Sinkhorn) plan instead, which is
cheaper for large batches and, with a larger ``reg``, interpolates towards ``independent``.
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


#: Above this relative column-marginal error the scaling Sinkhorn run is taken as failed.
_MARGINAL_TOLERANCE = 1e-2


def _entropic_plan(cost, reg: float):
    """The Sinkhorn plan P = argmin_P <P, C> - reg H(P) with uniform marginals (POT), as a tensor.

    The scaling form (``ot.sinkhorn``) multiplies by K = exp(-C / reg), fast but K under- or
    overflows when C / reg is large; then (non-finite plan or a column sum off by more than 1 %)
    the log-domain form ``ot.bregman.sinkhorn_log`` is run instead: stable, about 10x slower.
    """
    import warnings

    import ot
    import torch

    # POT follows its input's type: numpy on CPU (torch's CPU logsumexp crawls on subnormals), torch on GPU
    matrix = cost.numpy() if cost.device.type == "cpu" else cost
    a, b = ot.unif(cost.shape[0], type_as=matrix), ot.unif(cost.shape[1], type_as=matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failed scaling run is caught below and redone in log domain
        plan = ot.sinkhorn(a, b, matrix, reg)
    column_error = float(abs(plan.sum(0) / b - 1).max())
    if not column_error <= _MARGINAL_TOLERANCE:  # also true for NaN
        plan = ot.bregman.sinkhorn_log(a, b, matrix, reg)
    return torch.as_tensor(plan, device=cost.device)


@COUPLINGS.register("minibatch_sinkhorn")
def minibatch_sinkhorn(data, batch_size: int, generator, reg: float = 0.05):
    """Independent draws, then each x1 re-paired with an x0 drawn from the entropic OT plan.

    OT-CFM (Tong et al.) with a Sinkhorn plan: C_ij = |x0_i - x1_j|^2 / mean(C), so ``reg`` is
    dimensionless and means the same on every dataset; P = Sinkhorn(1/n, 1/n, C, reg); then for
    each column j, x0 is drawn from P[:, j] / sum_i P_ij. The draws are WITH replacement: an x0
    can serve several x1 and another none, so unlike ``minibatch_ot`` the returned x0 is not a
    permutation of the noise drawn; each x0_i is still picked sum_j P_ij / (1/n) = 1 time on
    average, so x0 stays N(0, I) in distribution. reg -> 0 approaches ``minibatch_ot``;
    reg -> inf approaches ``independent`` (a uniform plan).
    """
    import torch

    x0, x1 = independent(data, batch_size, generator)
    cost = torch.cdist(x0.flatten(1), x1.flatten(1)).pow(2).double()
    plan = _entropic_plan(cost / cost.mean(), reg)
    partner = torch.multinomial(plan.T.clamp_min(0), 1, generator=generator).squeeze(1)  # row j: P[:, j]
    return x0[partner], x1
