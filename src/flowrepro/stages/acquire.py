"""acquire: make or fetch one dataset and write ``data/<name>.npz`` plus its sha256, or fetch one set of
pretrained weights into ``data/weights/<name>/`` with its sha256 manifest (:mod:`flowrepro.data.weights`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flowrepro import io
from flowrepro.data.download import DigestError, digest_algorithm

TOY_DATASETS = ("moons", "8gaussians", "checkerboard", "spirals", "gmm2d", "gmm16d")
PACKAGED_IMAGES = ("digits", "mnist5k")
DOWNLOADED = ("mnist", "cifar10")
ALL_DATASETS = TOY_DATASETS + PACKAGED_IMAGES + DOWNLOADED


def parse_digests(entries: list[str] | None) -> dict[str, str]:
    """``["NAME=HEX", ...]`` (the CLI's repeated ``--digest``) -> ``{NAME: HEX}``, checked."""
    digests: dict[str, str] = {}
    for entry in entries or []:
        name, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not name or not value:
            raise DigestError(f"--digest {entry!r}: expected FILENAME=HEX, e.g. cifar-10-python.tar.gz=<md5 or sha256>")
        digest_algorithm(name, value)  # a malformed hex fails here, before any download
        if digests.get(name, value).lower() != value.lower():
            raise DigestError(f"--digest: two different digests for {name}: {digests[name]} and {value}")
        digests[name] = value
    return digests


def make_dataset(name: str, n_train: int = 20000, n_test: int = 5000, seed: int = 0,
                 download_dir: str | Path = "data/downloads", mirror: str | None = None,
                 digests: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Return the dataset's arrays: ``train`` and ``test`` (and labels for images).

    For downloaded datasets, ``mirror`` is a base URL or a local directory to fetch from, and
    ``digests`` maps an archive filename to an md5/sha256 that replaces the published one.
    """
    if name not in ALL_DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(ALL_DATASETS)}")
    if digests and name not in DOWNLOADED:
        raise DigestError(f"{name}: digests given for {', '.join(sorted(digests))}, but {name} downloads no files")
    if name in TOY_DATASETS:
        from flowrepro.data import gmm, toy2d  # noqa: F401  (registers the generators)
        from flowrepro.registry import DATASETS

        generate = DATASETS.get(name)
        rng = np.random.default_rng(seed)
        return {"train": generate(n_train, rng), "test": generate(n_test, rng)}
    from flowrepro.data import images

    if name == "digits":
        return images.digits(seed)
    if name == "mnist5k":
        return images.mnist5k(seed)
    # Without a mirror, each dataset keeps its own default host.
    source = {"mirror": mirror} if mirror else {}
    if name == "mnist":
        return images.mnist(download_dir, digests=digests, **source)
    return images.cifar10(download_dir, digests=digests, **source)


def run(dataset: str, out: str, n_train: int, n_test: int, seed: int,
        download_dir: str, mirror: str | None, digests: dict[str, str] | None = None) -> None:
    """Write ``out`` (npz) and its sha256 sidecar; see :func:`make_dataset` for the arguments."""
    arrays = make_dataset(dataset, n_train, n_test, seed, download_dir, mirror, digests)
    io.save_npz(out, **arrays)
    io.write_checksum(out)
    print(f"acquire: wrote {out} ({', '.join(f'{k}{tuple(v.shape)}' for k, v in arrays.items())})")


def run_weights(name: str, out_dir: str | None, mirror: str | None, digests: dict[str, str] | None = None) -> None:
    """Fetch weights set ``name`` into ``out_dir`` (default ``data/weights/<name>``) and write its manifest."""
    from flowrepro.data import weights

    manifest = weights.acquire(name, out_dir, mirror, digests)
    recorded = weights.read_manifest(manifest.parent)
    print(f"acquire: wrote {manifest.parent}/ ({', '.join(f'{f} sha256 {h[:12]}' for f, h in recorded.items())}) "
          f"and {manifest}")


def download_flags(scale: dict, dataset: str) -> str:
    """``--mirror``/``--digest`` flags for ``dataset`` from the scale's ``downloads:`` section (a local
    mirror and the digests of its archives, e.g. CI's generated ones); empty for the public sources."""
    if dataset not in DOWNLOADED or "downloads" not in scale:
        return ""
    from flowrepro.data import images

    own = {name for name, _ in images.MNIST_FILES.values()} if dataset == "mnist" else {images.CIFAR10_FILE[0]}
    downloads = scale["downloads"]
    flags = [f"--mirror '{downloads['mirror']}'"] if "mirror" in downloads else []
    flags += [f"--digest {name}={digest}" for name, digest in sorted(downloads.get("digests", {}).items()) if name in own]
    return " ".join(flags)
