r"""Fréchet distances between image sets: on a workflow-trained classifier, and on Inception.

The Fréchet distance between two Gaussians N(mu_1, Sigma_1) and N(mu_2, Sigma_2) fitted to
two sets of features is

.. math::  d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
                 - 2 \operatorname{tr}\big(\Sigma_1^{1/2}\,\Sigma_2\,\Sigma_1^{1/2}\big)^{1/2}

(:func:`frechet_distance`; the last trace equals tr (Sigma_1 Sigma_2)^{1/2}).

- :func:`fid_classifier` uses the penultimate layer of the small CNN that ``flowrepro
  classifier`` trains per dataset (:mod:`flowrepro.models.classifier`) and the reference
  statistics of the test set that stage caches beside it. Cheap on CPU; comparable only
  within one dataset and one classifier file.
- :func:`flowrepro.metrics.inception.fid_inception` is the usual FID (2048-d pool features of the TensorFlow FID
  InceptionV3, bit-identical to torch-fidelity's extractor that torchmetrics wraps) from a
  LOCAL weights file. It needs neither torch-fidelity nor torchvision: the network is defined
  in :mod:`flowrepro.metrics.inception`, and its features go to :func:`fid_from_features` (same value as torchmetrics'
  ``FrechetInceptionDistance``, to which the network can also be given as ``feature=``).

Both take images in [-1, 1] as (n, C, H, W) or flattened (n, C*H*W), and clip samples to
[-1, 1] first (the data range; generated samples may overshoot).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------
# The distance itself
# ----------------------------------------------------------------------------------------------

def _clamp_rounding(eigenvalues: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues that are rounding noise (below d * eps * the largest, or negative):
    their square roots (~1e-8 each) would otherwise add up in singular covariances."""
    tolerance = eigenvalues.size * np.finfo(np.float64).eps * np.abs(eigenvalues).max(initial=0.0)
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sqrt(sigma1) sigma2 sqrt(sigma1))^{1/2})``

    Computed in float64 in an eigen-based form that stays real: sqrt(sigma1) from the
    eigendecomposition of sigma1, then the eigenvalues of the
    symmetric PSD matrix sqrt(sigma1) sigma2 sqrt(sigma1); eigenvalues that are negative or
    rounding noise (below d * eps * the largest) are set to 0 before each square root.
    This equals the textbook tr((sigma1 sigma2)^{1/2}) (scipy.linalg.sqrtm, real part) but needs
    no complex arithmetic and handles singular covariances (fewer samples than dimensions,
    dead ReLU units). The result is clamped at 0 against rounding.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("frechet_distance: non-finite mean or covariance (NaN/inf features?)")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(sigma1)
    sqrt_sigma1 = (eigenvectors * np.sqrt(_clamp_rounding(eigenvalues))) @ eigenvectors.T
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    middle = (middle + middle.T) / 2
    trace_covmean = np.sqrt(_clamp_rounding(np.linalg.eigvalsh(middle))).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean
    return float(max(value, 0.0))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of ``features`` (n, d), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_statistics: need (n >= 2, d) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def fid_from_features(features1, features2) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (n1, d) and (n2, d).

    Same value as ``frechet_distance(*feature_statistics(f1), *feature_statistics(f2))``. When a
    set has fewer samples than dimensions it is computed exactly in the samples' span instead:
    with A_i the centred features over sqrt(n_i - 1) (Sigma_i = A_i^T A_i), the nonzero eigenvalues
    of Sigma_1 Sigma_2 are the squared singular values of A_1 A_2^T, so
    tr (Sigma_1 Sigma_2)^{1/2} = ||A_1 A_2^T||_* (nuclear norm): O(n1 n2 d), no d x d matrix.
    """
    f1, f2 = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    for f in (f1, f2):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"fid_from_features: need (n >= 2, d) features, got shape {f.shape}")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"fid_from_features: feature sizes differ, {f1.shape[1]} vs {f2.shape[1]}")
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        raise ValueError("fid_from_features: non-finite features (NaN/inf)")
    if min(len(f1), len(f2)) >= f1.shape[1]:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a1, a2 = (f1 - mu1) / np.sqrt(len(f1) - 1), (f2 - mu2) / np.sqrt(len(f2) - 1)
    trace_covmean = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    value = (mu1 - mu2) @ (mu1 - mu2) + (a1 * a1).sum() + (a2 * a2).sum() - 2.0 * trace_covmean
    return float(max(value, 0.0))


def fid_to_statistics(features, mu, sigma) -> float:
    r"""Fréchet distance between the Gaussian fitted to ``features`` (n, d) and a stored N(mu, sigma)
    (a reference set's statistics, e.g. ``flowrepro fid-reference``'s).

    With A the centred features over sqrt(n - 1) (Sigma_s = A^T A), the nonzero eigenvalues of
    Sigma^{1/2} Sigma_s Sigma^{1/2} are those of the n x n matrix A Sigma A^T, so when n <= d

    .. math::  \operatorname{tr}\big(\Sigma^{1/2}\Sigma_s\Sigma^{1/2}\big)^{1/2}
               = \sum_i \sqrt{\lambda_i(A \Sigma A^\top)}

    costs O(n d^2) and no d x d eigenproblem (16 samples against 2048-d Inception statistics: a
    16 x 16 one). With n > d it is :func:`frechet_distance` of the two fitted Gaussians.
    """
    f = np.asarray(features, dtype=np.float64)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or mu.shape != (f.shape[1],) or sigma.shape != (f.shape[1],) * 2:
        raise ValueError(f"fid_to_statistics: need (n >= 2, d) features and (d,), (d, d) statistics, got "
                         f"{f.shape}, {mu.shape}, {sigma.shape}")
    if not (np.isfinite(f).all() and np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError("fid_to_statistics: non-finite features or statistics (NaN/inf)")
    if len(f) > f.shape[1]:
        return frechet_distance(*feature_statistics(f), mu, sigma)
    mean = f.mean(axis=0)
    a = (f - mean) / np.sqrt(len(f) - 1)
    sigma = (sigma + sigma.T) / 2
    small = a @ sigma @ a.T
    trace_covmean = np.sqrt(_clamp_rounding(np.linalg.eigvalsh((small + small.T) / 2))).sum()
    value = (mean - mu) @ (mean - mu) + (a * a).sum() + np.trace(sigma) - 2.0 * trace_covmean
    return float(max(value, 0.0))


class RunningMoments:
    r"""Mean and unbiased covariance of features that arrive in batches, without keeping them.

    Sums are taken about a fixed shift c (the first batch's mean), which keeps the subtraction in
    Sigma = (sum (f - c)(f - c)^T - n m m^T) / (n - 1), m = mean(f - c), well conditioned in float64.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, features) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or not np.isfinite(f).all():
            raise ValueError(f"RunningMoments.add: need finite (n, d) features, got shape {f.shape}")
        if self.shift is None:
            self.shift = f.mean(axis=0)
            self.total, self.outer = np.zeros(f.shape[1]), np.zeros((f.shape[1],) * 2)
        centred = f - self.shift
        self.n += len(f)
        self.total += centred.sum(axis=0)
        self.outer += centred.T @ centred

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` of everything added (at least two rows)."""
        if self.n < 2:
            raise ValueError(f"RunningMoments: need at least 2 rows, have {self.n}")
        mean = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)
        return self.shift + mean, (sigma + sigma.T) / 2


# ----------------------------------------------------------------------------------------------
# FID on the workflow's own classifier
# ----------------------------------------------------------------------------------------------

def _file_key(path: str | os.PathLike) -> tuple[str, int, int]:
    """Cache key that changes when the file is rewritten (path, mtime, size)."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (has `flowrepro classifier` run?)") from None
    return str(resolved), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _cached_classifier(key: tuple[str, int, int]):
    from flowrepro import io
    from flowrepro.models.classifier import load_classifier

    model, checkpoint = load_classifier(key[0])
    return model, checkpoint, io.sha256_file(key[0])


def load_classifier_cached(classifier_file: str | os.PathLike):
    """``(model, checkpoint)`` from :func:`flowrepro.models.classifier.load_classifier`, loaded once
    per process (reloaded if the file changes)."""
    model, checkpoint, _ = _cached_classifier(_file_key(classifier_file))
    return model, checkpoint


@functools.lru_cache(maxsize=8)
def _cached_stats(key: tuple[str, int, int]) -> dict[str, np.ndarray]:
    from flowrepro import io

    stats = io.load_npz(key[0])
    missing = {"mu", "sigma", "n"} - set(stats)
    if missing:
        raise KeyError(f"{key[0]}: not a reference-statistics file, missing {sorted(missing)}")
    return stats


def load_reference_stats(stats_file: str | os.PathLike) -> dict[str, np.ndarray]:
    """The cached ``mu``, ``sigma``, ``n``, ``test_accuracy`` (and ``classifier_sha256``) of a dataset."""
    return _cached_stats(_file_key(stats_file))


def _as_float_images(images, clip: bool) -> np.ndarray:
    array = np.asarray(images, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError("samples contain NaN or inf (did the sampler diverge?)")
    return np.clip(array, -1.0, 1.0) if clip else array


def classifier_features(model, images, batch_size: int = 1000, clip: bool = False) -> np.ndarray:
    """Penultimate-layer features (n, d), float64, of images (n, C, H, W) or (n, C*H*W); ``clip``
    clips each batch to [-1, 1] (batch by batch: no copy of the whole set)."""
    import torch

    images = np.asarray(images, dtype=np.float32)
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = _as_float_images(images[start:start + batch_size], clip)
            parts.append(model.features(torch.as_tensor(batch)).double().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.arch["feature_dim"]))


def fid_classifier(samples, classifier_file: str | os.PathLike, stats_file: str | os.PathLike,
                   clip: bool = True, batch_size: int = 1000) -> float:
    """Fréchet distance between the classifier features of ``samples`` and the dataset's test set.

    ``samples``: (n, C, H, W) or (n, C*H*W) in [-1, 1] (clipped to it unless ``clip=False``),
    n >= 2; the shape must be the classifier's. ``classifier_file`` / ``stats_file``: the two
    outputs of ``flowrepro classifier`` (``results/classifiers/<dataset>.pt`` and
    ``.stats.npz``). The classifier is loaded once per process. With few samples the value
    carries a positive finite-sample bias: compare methods at equal n.
    """
    model, checkpoint, sha = _cached_classifier(_file_key(classifier_file))
    stats = load_reference_stats(stats_file)
    if "classifier_sha256" in stats and str(stats["classifier_sha256"]) != sha:
        raise ValueError(f"{stats_file} was computed with another classifier than {classifier_file} "
                         "(rerun `flowrepro classifier` to rewrite both)")
    features = classifier_features(model, samples, batch_size, clip=clip)
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, stats["mu"], stats["sigma"])
