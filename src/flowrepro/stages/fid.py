"""fid: the Fréchet distance of sample files, standalone (as EDM's ``fid.py calc``).

    flowrepro fid --samples results/score_sde/samples/digits/vp_eps.npz --classifier results/classifiers/digits.pt
    flowrepro fid --samples my_samples.npz --inception-weights pt_inception.pth --reference data/mnist5k.npz
    flowrepro fid --samples my_samples.npz --inception-weights data/weights/fid_inception/weights-inception-2015-12-05-6726825d.pth \
        --reference-stats results/fid_reference/cifar10.6726825d.npz

Prints one line per image array in each file (sample files hold one array per sampler run). With
``--classifier`` the reference is the cached statistics beside it (``<dataset>.stats.npz``, the
test set: the tiny-scale metric). With ``--inception-weights`` (a LOCAL FID-Inception weights
file: nothing is downloaded; an acquired one is checked against its manifest first) it is, as in
the papers, the TRAINING set: the ``train`` split of ``--reference`` (features computed once for
all arrays), or the stored ``mu``/``sigma`` of ``--reference-stats`` (``flowrepro
fid-reference``'s output, refused if it records other weights than these; any npz with ``mu``
and ``sigma``, such as the TTUR statistics files, works too).
"""
from __future__ import annotations

import numpy as np

from flowrepro import io


def image_arrays(path: str) -> dict[str, np.ndarray]:
    """The (n, C, H, W) arrays of an npz (sample runs, or a dataset's ``test``)."""
    return {key: value for key, value in io.load_npz(path).items() if value.ndim == 4 and not key.startswith("trajectory")}


def _reference_stats(path: str, inception_weights: str) -> dict[str, np.ndarray]:
    """``mu``/``sigma`` of a statistics file: checked against its .sha256 where it has one, and against
    the weights it records having been computed with."""
    from flowrepro.metrics.inception import inception_weights_sha256

    stats = io.load_data(path) if io.checksum_path(path).exists() else io.load_npz(path)
    if "mu" not in stats or "sigma" not in stats:
        raise KeyError(f"{path}: not a statistics file (needs mu and sigma)")
    sha256 = inception_weights_sha256(inception_weights)
    if "weights_sha256" in stats and str(stats["weights_sha256"]) != sha256:
        raise ValueError(f"{path} was computed with weights of sha256 {stats['weights_sha256']}, not those of "
                         f"{inception_weights} ({sha256})")
    return stats


def run(sample_files: list[str], classifier: str | None = None, inception_weights: str | None = None,
        reference: str | None = None, reference_stats: str | None = None) -> dict[str, float]:
    from flowrepro.metrics.fid import fid_classifier, fid_from_features, fid_to_statistics

    if (classifier is None) == (inception_weights is None):
        raise ValueError("give exactly one of --classifier or --inception-weights")
    if inception_weights is not None and (reference is None) == (reference_stats is None):
        raise ValueError("--inception-weights needs one of --reference data/<dataset>.npz (its train split is the "
                         "reference) or --reference-stats FILE")
    stats = _reference_stats(reference_stats, inception_weights) if reference_stats else None
    results: dict[str, float] = {}
    real_features = None
    for path in sample_files:
        arrays = image_arrays(path)
        if not arrays:
            raise ValueError(f"{path}: no image arrays (n, C, H, W) in it")
        for key, images in arrays.items():
            if classifier is not None:
                from flowrepro.stages.classifier import stats_path

                value = fid_classifier(images, classifier, stats_path(classifier))
            else:
                from flowrepro.metrics.inception import inception_features

                features = inception_features(images, inception_weights)
                if stats is not None:
                    value = fid_to_statistics(features, stats["mu"], stats["sigma"])
                else:
                    if real_features is None:
                        real_features = inception_features(io.load_data(reference)["train"], inception_weights)
                    value = fid_from_features(features, real_features)
            results[f"{path}:{key}"] = value
            print(f"{path}:{key}\t{value:.6g}")
    return results
