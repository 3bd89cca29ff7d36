"""Analytic Gaussian mixtures with the exact velocity and score of the linear path.

Source x0 ~ N(0, I), target x1 ~ sum_k pi_k N(mu_k, Sigma_k), path x_t = (1 - t) x0 + t x1.
Given component k, x_t ~ N(t mu_k, C_k(t)) with C_k(t) = (1 - t)^2 I + t^2 Sigma_k, and

    E[x1 | x_t, k] = mu_k + t Sigma_k C_k^{-1} (x_t - t mu_k)
    E[x0 | x_t, k] = (1 - t) C_k^{-1} (x_t - t mu_k)

so the marginal velocity is v(x, t) = sum_k w_k(x, t) (E[x1 | x, k] - E[x0 | x, k]) with
responsibilities w_k ∝ pi_k N(x; t mu_k, C_k(t)), and the score of p_t is
grad log p_t(x) = -sum_k w_k C_k^{-1} (x - t mu_k). These are exact: a sampler run on them
has pure solver error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrepro.registry import DATASETS


@dataclass(frozen=True)
class GaussianMixture:
    """Mixture weights (K,), means (K, d), covariances (K, d, d)."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        components = rng.choice(len(self.weights), size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covs)
        z = rng.standard_normal((n, self.dim))
        return (self.means[components] + np.einsum("nij,nj->ni", chol[components], z)).astype(np.float32)

    def _posterior(self, x, t):
        """Per-component C^{-1}(x - t mu) (n, K, d) and responsibilities (n, K), in torch."""
        import torch

        dtype, device = x.dtype, x.device
        means = torch.as_tensor(self.means, dtype=torch.float64, device=device)
        covs = torch.as_tensor(self.covs, dtype=torch.float64, device=device)
        log_w = torch.log(torch.as_tensor(self.weights, dtype=torch.float64, device=device))
        x64 = x.to(torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64, device=device).reshape(-1, 1, 1, 1)
        eye = torch.eye(self.dim, dtype=torch.float64, device=device)
        cov_t = (1 - t64) ** 2 * eye + t64**2 * covs  # (n or 1, K, d, d)
        centred = x64[:, None, :] - t64[..., 0] * means  # (n, K, d)
        chol = torch.linalg.cholesky(cov_t)
        solved = torch.cholesky_solve(centred.unsqueeze(-1), chol).squeeze(-1)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_prob = -0.5 * (centred * solved).sum(-1) - 0.5 * log_det + log_w
        resp = torch.softmax(log_prob, dim=-1)
        return solved, resp, t64, covs, means, dtype

    def velocity(self, x, t):
        """Exact marginal velocity v(x, t) of the linear path (torch, any batch of x)."""
        solved, resp, t64, covs, means, dtype = self._posterior(x, t)
        t3 = t64[..., 0]
        e_x1 = means + t3 * (covs @ solved.unsqueeze(-1)).squeeze(-1)
        e_x0 = (1 - t3) * solved
        return (resp.unsqueeze(-1) * (e_x1 - e_x0)).sum(1).to(dtype)

    def score(self, x, t):
        """Exact score grad log p_t(x) of the linear-path marginal at time t < 1."""
        solved, resp, *_, dtype = self._posterior(x, t)
        return -(resp.unsqueeze(-1) * solved).sum(1).to(dtype)


def ring_mixture(dim: int = 2, k: int = 8, radius: float = 3.0, std: float = 0.3) -> GaussianMixture:
    """K equal-weight isotropic components on a circle in the first two coordinates."""
    angles = 2 * np.pi * np.arange(k) / k
    means = np.zeros((k, dim))
    means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
    covs = np.broadcast_to(std**2 * np.eye(dim), (k, dim, dim)).copy()
    return GaussianMixture(np.full(k, 1.0 / k), means, covs)


def anisotropic_mixture(dim: int = 16, k: int = 4, seed: int = 0) -> GaussianMixture:
    """K components with random means and random well-conditioned full covariances."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(k, dim))
    basis = rng.normal(size=(k, dim, dim)) / np.sqrt(dim)
    covs = 0.05 * np.eye(dim) + 0.3 * basis @ np.transpose(basis, (0, 2, 1))
    weights = rng.dirichlet(np.full(k, 5.0))
    return GaussianMixture(weights, means, covs)


MIXTURES = {
    "gmm2d": lambda: ring_mixture(dim=2),
    "gmm16d": lambda: anisotropic_mixture(dim=16),
}


def mixture(name: str) -> GaussianMixture:
    if name not in MIXTURES:
        raise KeyError(f"unknown analytic mixture {name!r}; known: {sorted(MIXTURES)}")
    return MIXTURES[name]()


for _name in MIXTURES:
    DATASETS.register(_name)(lambda n, rng, _name=_name: mixture(_name).sample(n, rng))
