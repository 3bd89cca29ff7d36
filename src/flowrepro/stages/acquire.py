"""acquire: make or fetch one dataset and write ``data/<name>.npz`` plus its sha256."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flowrepro import io

TOY_DATASETS = ("moons", "8gaussians", "checkerboard", "spirals", "gmm2d", "gmm16d")
PACKAGED_IMAGES = ("digits", "mnist5k")
DOWNLOADED = ("mnist", "cifar10")
ALL_DATASETS = TOY_DATASETS + PACKAGED_IMAGES + DOWNLOADED


def make_dataset(name: str, n_train: int = 20000, n_test: int = 5000, seed: int = 0,
                 download_dir: str | Path = "data/downloads", mirror: str | None = None) -> dict[str, np.ndarray]:
    """Return the dataset's arrays: ``train`` and ``test`` (and labels for images)."""
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
    if name == "mnist":
        return images.mnist(download_dir, **({"mirror": mirror} if mirror else {}))
    if name == "cifar10":
        return images.cifar10(download_dir, **({"mirror": mirror} if mirror else {}))
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(ALL_DATASETS)}")


def run(dataset: str, out: str, n_train: int, n_test: int, seed: int,
        download_dir: str, mirror: str | None) -> None:
    arrays = make_dataset(dataset, n_train, n_test, seed, download_dir, mirror)
    io.save_npz(out, **arrays)
    io.write_checksum(out)
    print(f"acquire: wrote {out} ({', '.join(f'{k}{tuple(v.shape)}' for k, v in arrays.items())})")
