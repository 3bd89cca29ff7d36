"""fid-reference: the Inception statistics of a dataset's training set, and the fid_inception rows' scorer.

The papers' FID protocol (Heusel et al.'s TTUR code, DDPM, score SDE, EDM, rectified flow): the
2048-d pool features of the TensorFlow FID InceptionV3 on images quantised to uint8 and resized to
299x299 with TensorFlow 1's bilinear resize (:mod:`flowrepro.metrics.inception`), the reference
statistics (mu, sigma) of the TRAINING set (CIFAR-10: all 50,000 images), 50,000 generated samples;
FID = |mu_s - mu_r|^2 + tr(Sigma_s + Sigma_r - 2 (Sigma_r^{1/2} Sigma_s Sigma_r^{1/2})^{1/2}).

``flowrepro fid-reference`` computes the statistics once per dataset and weights file, streaming
the features (:class:`flowrepro.metrics.fid.RunningMoments`), into
``results/fid_reference/<dataset>.<sha8>.npz`` (+ ``.sha256``), sha8 the first 8 hex digits of the
weights' sha256: new weights, new statistics, never a silent mix. A scale turns the rows on with a
``fid_inception:`` section (``samples``: scored per run, the first of its n_eval; ``batch_size``),
and lists ``fid_inception`` under ``downloads: {weights: ...}`` so the workflow acquires them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flowrepro import io
from flowrepro.config import ConfigError

WEIGHTS_NAME = "fid_inception"
DEFAULT_BATCH = 200
REFERENCE_DIR = "results/fid_reference"


def weights_file() -> Path:
    """``data/weights/fid_inception/weights-inception-2015-12-05-6726825d.pth``."""
    from flowrepro.data.weights import FID_INCEPTION_FILE, weights_dir

    return weights_dir(WEIGHTS_NAME) / FID_INCEPTION_FILE


def settings(scale: dict, source: str | Path = "") -> dict | None:
    """The scale's ``fid_inception`` section with its defaults and the weights it uses (None: off).

    ``{samples (None: each run's n_eval), batch_size, weights (path), manifest (its path), sha256 (the
    weights', from the pinned table or the scale's digests)}``; a sample count the runs cannot supply
    or weights the scale does not acquire fail here, naming the key.
    """
    from flowrepro.data.weights import FID_INCEPTION_FILE, expected_sha256, manifest_path, scale_digests, scale_weights

    section = scale.get("fid_inception")
    if section is None:
        return None
    where = source or f"scale {scale['scale']!r}"
    samples, n_eval = section.get("samples"), scale.get("flow_images", {}).get("n_eval")
    if samples is not None and n_eval is not None and samples > n_eval:
        raise ConfigError(f"{where}: fid_inception/samples = {samples} exceeds flow_images/n_eval = {n_eval} "
                          "(FID scores the first samples of each run's n_eval)")
    if WEIGHTS_NAME not in scale_weights(scale):
        raise ConfigError(f"{where}: fid_inception needs the Inception weights: add {WEIGHTS_NAME} to "
                          "downloads/weights (the acquire_weights rule fetches them, sha256-checked)")
    sha256 = expected_sha256(WEIGHTS_NAME, FID_INCEPTION_FILE, scale_digests(scale, WEIGHTS_NAME))
    return {"samples": samples, "batch_size": section.get("batch_size", DEFAULT_BATCH), "weights": str(weights_file()),
            "manifest": str(manifest_path(weights_file().parent)), "sha256": sha256}


def reference_file(dataset: str, sha256: str) -> str:
    """``results/fid_reference/<dataset>.<first 8 hex of the weights' sha256>.npz``."""
    return f"{REFERENCE_DIR}/{dataset}.{sha256[:8]}.npz"


def run(data_file: str, weights: str, out: str, batch_size: int = DEFAULT_BATCH, device: str = "auto") -> None:
    """Write the statistics of ``data_file``'s ``train`` split in ``weights``' features to ``out`` (+ .sha256)."""
    from flowrepro.config import pick_device
    from flowrepro.metrics.fid import RunningMoments
    from flowrepro.metrics.inception import inception_features, inception_weights_sha256

    device = pick_device(device)
    sha256 = inception_weights_sha256(weights, require_manifest=True)  # checked against its manifest
    train = io.load_data(data_file)["train"]
    moments = RunningMoments()
    for start in range(0, len(train), batch_size):  # one batch of features in memory at a time
        moments.add(inception_features(train[start:start + batch_size], weights, batch_size=batch_size, device=device,
                                       require_manifest=True))
    mu, sigma = moments.statistics()
    io.save_npz(out, mu=mu, sigma=sigma, n=moments.n, split="train", data_sha256=io.expected_checksum(data_file),
                weights_sha256=sha256)
    io.write_checksum(out)
    print(f"fid-reference: wrote {out} (Inception statistics of {moments.n} training images of {data_file}, "
          f"weights sha256 {sha256[:12]}, device {device})")


class InceptionFID:
    """``fid_inception`` of sample sets against each dataset's training statistics, for the evaluate stage.

    Loads the weights (checked against their manifest) and each reference file (checked against its
    .sha256, and refused unless it was computed with these very weights).
    """

    def __init__(self, fid: dict, reference_files: list[str], weights: str | None, device: str) -> None:
        from flowrepro.metrics.inception import inception_weights_sha256

        if weights is None:
            raise KeyError("the scale has fid_inception: evaluate needs --inception-weights "
                           f"{fid['weights']} and --fid-references")
        self.weights, self.device, self.fid = weights, device, fid
        self.sha256 = inception_weights_sha256(weights, require_manifest=True)
        self.references = {}
        for path in reference_files:
            stats = io.load_data(path)
            if str(stats["weights_sha256"]) != self.sha256:
                raise ValueError(f"{path} was computed with weights of sha256 {stats['weights_sha256']}, not those of "
                                 f"{weights} ({self.sha256}); rerun `flowrepro fid-reference`")
            self.references[Path(path).name.split(".")[0]] = (path, stats)

    def __call__(self, samples: np.ndarray, dataset: str) -> float:
        from flowrepro.metrics.fid import fid_to_statistics
        from flowrepro.metrics.inception import inception_features

        if dataset not in self.references:
            raise KeyError(f"fid_inception: no reference statistics for {dataset!r}; pass --fid-references "
                           f"{reference_file(dataset, self.sha256)}")
        scored = samples[:self.fid["samples"]] if self.fid["samples"] else samples
        features = inception_features(scored, self.weights, batch_size=self.fid["batch_size"], device=self.device,
                                      require_manifest=True)
        stats = self.references[dataset][1]
        return fid_to_statistics(features, stats["mu"], stats["sigma"])

    def describe(self, datasets: list[str]) -> list[str]:
        """One provenance line per dataset: features, weights, reference and sample count."""
        count = f"the first {self.fid['samples']} samples of each run" if self.fid["samples"] else "every sample of a run"
        return [f"fid_inception: 2048-d pool features of the FID InceptionV3 ({Path(self.weights).name}, sha256 "
                f"{self.sha256}), TF1 bilinear resize to 299x299, reference statistics of {d}'s "
                f"{int(self.references[d][1]['n'])} training images ({self.references[d][0]}), {count}"
                for d in datasets if d in self.references]
