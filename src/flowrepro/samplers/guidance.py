"""Classifier-free guidance on the exact harness: a class-conditional Gaussian mixture with closed-form
conditional and unconditional eps, so the guided probability-flow ODE and its reference are exact.

Classes. The K components of a mixture (:mod:`flowrepro.data.gmm`) are split into C disjoint classes
by index, component k in class k mod C (C = 2 by default): on gmm2d's ring the classes interleave
(even and odd angles), on gmm16d class 0 = components {0, 2}, class 1 = {1, 3}. Class c's data is
the mixture restricted to its components with renormalised weights, p(x1 | c) ∝ sum_{k in c} pi_k
N(mu_k, Sigma_k); the unconditional p(x1) is the whole mixture, and p(c) = sum_{k in c} pi_k.

Guidance (the paper's / diffusers' ``guidance_scale`` convention, Ho & Salimans 2022 with w + 1 -> w):

    eps_w(x, s | c) = eps_u(x, s) + w (eps_c(x, s) - eps_u(x, s)),

computed as (1 - w) eps_u + w eps_c so that w = 0 is exactly the unconditional model and w = 1
exactly the plain conditional one (no guidance); the paper's regime is w = 7.5-15. eps_u and eps_c
come from :class:`~flowrepro.samplers.diffusion.ExactMixture` of the whole mixture and of class c's
sub-mixture. One guided evaluation counts as one model call (one NFE), as in the paper, where the
conditional and unconditional passes are batched into one network call.

Reference. The linear-path velocity is affine in eps at fixed (z, u): with z = x / (alpha + sigma),
u = alpha / (alpha + sigma), E[x0 | z] = eps and E[x1 | z] = (z - (1 - u) eps) / u, so v = (z - eps) / u
and the guided velocity is v_w = (1 - w) v_u + w v_c = (z - eps_w) / u. DDIM's ODE dy/ds = eps_w in
y = x / alpha, s = sigma / alpha is the same ODE as dz/du = v_w (z = y / (1 + s), u = 1 / (1 + s)),
so :func:`~flowrepro.samplers.diffusion.reference_endpoint` with this model's ``velocity`` solves the
GUIDED probability-flow ODE (dopri5, rtol 1e-8, float64). It does not sample p(x | c): samplers are
judged by solver error against it, not by a distance to data.

Labels. Row i of any batch has class i mod C (alternating), so a batch of noise is half class 0 and
half class 1 for every seed, and the same row keeps its class through a sampler's steps and the
reference solve.

Harness key (``flowrepro.samplers.experiment``): ``guidance: {scale: [7.5, 10, 15], classes: 2,
unguided: true}`` runs every dataset also at each scale w as the dataset ``<name>_w<w>`` (e.g.
``gmm2d_w10``, ``gmm16d_w7.5``); ``unguided: false`` drops the plain cases. Samplers and BOSS see
only ``eps``/``velocity``; DPM-Solver-v3's EMS needs the posterior and its Jacobian, which a guided
case does not offer (the harness skips it there).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def class_of_component(n_components: int, n_classes: int = 2) -> np.ndarray:
    """Class of each component: k mod C (needs at least one component per class)."""
    if not 1 <= n_classes <= n_components:
        raise ValueError(f"{n_classes} classes for {n_components} components: need 1 <= C <= K")
    return np.arange(n_components) % n_classes


def class_labels(n: int, n_classes: int = 2):
    """Label of each row of a batch of n: i mod C (alternating classes)."""
    import torch

    return torch.arange(n) % n_classes


def class_mixture(gmm, c: int, n_classes: int = 2):
    """The mixture restricted to class c's components, weights renormalised: p(x1 | c)."""
    from flowrepro.data.gmm import GaussianMixture

    keep = class_of_component(len(gmm.weights), n_classes) == c
    weights = np.asarray(gmm.weights, dtype=np.float64)[keep]
    return GaussianMixture(weights / weights.sum(), np.asarray(gmm.means)[keep], np.asarray(gmm.covs)[keep])


class GuidedMixture:
    """Exact classifier-free-guided model of a class-conditional mixture: ``eps(x, s)`` (VP, VE sigma s)
    and ``velocity(x, t)`` (linear path), both (1 - w) uncond + w cond with row i of class i mod C."""

    def __init__(self, gmm, scale: float, n_classes: int = 2) -> None:
        from flowrepro.samplers.diffusion import ExactMixture

        self.gmm, self.scale, self.n_classes, self.dim = gmm, float(scale), int(n_classes), gmm.dim
        self.uncond = ExactMixture(gmm)
        self.cond = [ExactMixture(class_mixture(gmm, c, n_classes)) for c in range(n_classes)]

    def _guided(self, x, call):
        """(1 - w) call(uncond, x) + w call(cond_c, x_c), row by row with c = i mod C."""
        import torch

        uncond = call(self.uncond, x)
        cond = torch.empty_like(uncond)
        for c, exact in enumerate(self.cond):
            cond[c::self.n_classes] = call(exact, x[c::self.n_classes])  # rows i = c mod C
        return (1 - self.scale) * uncond + self.scale * cond  # w = 0 / 1 give uncond / cond exactly

    def eps(self, x, s: float):
        """Guided eps_w(x, s | c) = eps_u + w (eps_c - eps_u)."""
        return self._guided(x, lambda exact, z: exact.eps(z, s))

    def velocity(self, x, t):
        """Guided linear-path velocity (z - eps_w) / u = (1 - w) v_u + w v_c (the reference's ODE)."""
        return self._guided(x, lambda exact, z: exact.velocity(z, t))


def guided_cases(experiment: dict) -> list[tuple[str, str, float | None]]:
    """(base dataset, row label, w or None) for every case of an experiment's ``datasets`` and ``guidance``."""
    spec: dict[str, Any] = experiment.get("guidance") or {}
    scales = spec.get("scale", [])
    scales = [scales] if isinstance(scales, (int, float)) else list(scales)
    cases = []
    for dataset in experiment.get("datasets", ["gmm2d"]):
        if not scales or spec.get("unguided", True):
            cases.append((dataset, dataset, None))
        cases += [(dataset, f"{dataset}_w{float(w):g}", float(w)) for w in scales]
    return cases


def guide(case, scale: float | None, experiment: dict) -> None:
    """Give a harness case the guided model at scale w (None: leave it unguided); its references
    (computed lazily from ``case.exact``) are then those of the guided ODE."""
    if scale is not None:
        case.exact = GuidedMixture(case.gmm, scale, int((experiment.get("guidance") or {}).get("classes", 2)))


__all__ = ["GuidedMixture", "class_labels", "class_mixture", "class_of_component", "guide", "guided_cases"]
