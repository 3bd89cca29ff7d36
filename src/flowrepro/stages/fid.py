"""fid: the Fréchet distance of sample files, standalone (as EDM's ``fid.py calc``).

    flowrepro fid --samples results/score_sde/samples/digits/vp_eps.npz --classifier results/classifiers/digits.pt
    flowrepro fid --samples my_samples.npz --inception-weights pt_inception.pth --reference data/mnist5k.npz

Prints one line per image array in each file (sample files hold one array per sampler run). With
``--classifier`` the reference is the cached statistics beside it (``<dataset>.stats.npz``); with
``--inception-weights`` (a LOCAL FID-Inception weights file: nothing is downloaded) it is the
``test`` split of ``--reference``, whose features are computed once for all arrays.
"""
from __future__ import annotations

import numpy as np

from flowrepro import io


def image_arrays(path: str) -> dict[str, np.ndarray]:
    """The (n, C, H, W) arrays of an npz (sample runs, or a dataset's ``test``)."""
    return {key: value for key, value in io.load_npz(path).items() if value.ndim == 4 and not key.startswith("trajectory")}


def run(sample_files: list[str], classifier: str | None = None, inception_weights: str | None = None,
        reference: str | None = None) -> dict[str, float]:
    from flowrepro.metrics.fid import fid_classifier, fid_from_features

    if (classifier is None) == (inception_weights is None):
        raise ValueError("give exactly one of --classifier or --inception-weights")
    if inception_weights is not None and reference is None:
        raise ValueError("--inception-weights needs --reference data/<dataset>.npz (its test split is the reference)")
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

                if real_features is None:
                    real_features = inception_features(io.load_data(reference)["test"], inception_weights)
                value = fid_from_features(inception_features(images, inception_weights), real_features)
            results[f"{path}:{key}"] = value
            print(f"{path}:{key}\t{value:.6g}")
    return results
