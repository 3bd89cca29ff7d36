"""Small stand-ins for the MNIST and CIFAR-10 archives, and a local HTTP server to serve them.

The files have the real names and formats, so the acquire stage parses them exactly as it would
the published ones; their digests are passed as overrides (``--digest``/``digests=``).
Tests import it as ``from fake_archives import ...`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from flowrepro.data import images

CIFAR10_MEMBER_DIR = "cifar-10-batches-py"


def md5_file(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """A gzipped unsigned-byte IDX file (MNIST's format) holding ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    # mtime=0: the same array always gives the same bytes, hence the same digest.
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def write_mnist_archives(directory: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, str]:
    """Write MNIST's four IDX gz files (real names) with random 28x28 images; return {filename: md5}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    contents = {"train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": rng.integers(0, 10, n_train),
                "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": rng.integers(0, 10, n_test)}
    digests = {}
    for key, array in contents.items():
        name = images.MNIST_FILES[key][0]
        (directory / name).write_bytes(idx_bytes(array))
        digests[name] = md5_file(directory / name)
    return digests


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(f"{CIFAR10_MEMBER_DIR}/{name}")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _cifar_batch(rng: np.random.Generator, label: str, n: int) -> bytes:
    """One pickled batch, keyed by bytes as in the Python-2 pickles of the real archive."""
    batch = {b"batch_label": label.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"fake_{label.replace(' ', '_')}_{i}.png".encode() for i in range(n)]}
    return pickle.dumps(batch, protocol=2)


def write_cifar10_archive(directory: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, str]:
    """Write ``cifar-10-python.tar.gz`` laid out like the real one; return {filename: md5}.

    ``n_train`` images are split over data_batch_1..5 (each gets at least one), ``n_test`` go
    to test_batch.
    """
    if n_train < 5 or n_test < 1:
        raise ValueError(f"need n_train >= 5 (one per data batch) and n_test >= 1, got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo(CIFAR10_MEMBER_DIR)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            _add_member(tar, f"data_batch_{i}", _cifar_batch(rng, f"training batch {i} of 5", len(part)))
        _add_member(tar, "test_batch", _cifar_batch(rng, "testing batch 1 of 1", n_test))
        labels = [name.encode() for name in ("airplane", "automobile", "bird", "cat", "deer",
                                             "dog", "frog", "horse", "ship", "truck")]
        _add_member(tar, "batches.meta", pickle.dumps({b"label_names": labels, b"num_vis": 3072}, protocol=2))
    name = images.CIFAR10_FILE[0]
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # Gzip separately with mtime=0 so the archive (and its md5) is reproducible.
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return {name: md5_file(path)}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        pass  # keep pytest's output free of one access-log line per request


@contextlib.contextmanager
def serve_directory(directory: str | Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port); yield the base URL, ending in '/'."""
    handler = partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits for one poll, which would add 0.5 s per test.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
