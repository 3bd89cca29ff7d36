"""Atomic writes, checksums, safe tensor files and the one tidy table format every stage writes.

Every output goes to a temporary file in the same directory and is renamed into place,
so a killed job never leaves a complete-looking file behind.

No file the workflow reads can run code, and every input is checked:

- Trained models (``results/models/<dataset>/<key>.pt``, ``<key>.seed<k>.pt``), training
  checkpoints (``<out>.seed<k>.ckpt``) and classifiers (``results/classifiers/<dataset>.pt``) are
  safetensors files (:func:`save_tensors`): tensors plus JSON metadata, never a pickle. The ``.pt``
  and ``.ckpt`` names are kept for compatibility with the workflow's rules; the content is
  safetensors. Nested structures (per-seed state dicts, optimizer state, loss histories) are
  flattened by :func:`save_tree` into tensor keys such as ``seeds/0/state_dict/net.0.weight`` and
  a JSON skeleton. :func:`load_tensors` refuses anything else (a pickle, a truncated file) with
  :class:`UnsafeFileError`, and a file whose contents no longer match the sha256 recorded in its
  header (a flipped byte in the tensor data or the metadata) with :class:`ChecksumMismatch`.
- Datasets (``data/<name>.npz``) have a ``<name>.npz.sha256`` sidecar in ``sha256sum`` format,
  written by ``acquire`` (:func:`write_checksum`); :func:`load_data` verifies it before reading.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

#: Columns of every metrics table (results/<experiment>/metrics.csv), in order.
TIDY_COLUMNS = [
    "experiment", "dataset", "method", "optimizer", "sampler", "schedule",
    "nfe", "seed", "scale", "metric", "value", "wall_s",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


class NpzWriter:
    """An ``.npz`` written one array at a time (as ``np.savez_compressed`` lays it out), so a stage
    holds one array in memory, not all; the file appears at ``path`` only when the block succeeds."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path

    def __enter__(self) -> "NpzWriter":
        import zipfile

        self._atomic = atomic_path(self.path)
        self._zip = zipfile.ZipFile(self._atomic.__enter__(), "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self._names: set[str] = set()
        return self

    def add(self, name: str, array: Any) -> None:
        if name in self._names:
            raise KeyError(f"{self.path}: array {name!r} written twice")
        self._names.add(name)
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)

    def __exit__(self, *exc) -> None:
        self._zip.close()
        self._atomic.__exit__(*exc)


@contextlib.contextmanager
def npy_memmap(path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32) -> Iterator[np.ndarray]:
    """A writable memory-mapped ``.npy`` of ``shape``: filled in place (larger than memory is fine),
    flushed and renamed onto ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()
        del array


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator[Any]:
    """An ``.npz`` opened lazily: each array is read when indexed (no pickles)."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (has its acquire/sample job run?)") from None
    with data:
        yield data


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (has its acquire/sample job run?)") from None


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically. A pickle: not for files the workflow reads back (see :func:`save_tree`)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    return sha256_files([path], chunk)


def sha256_files(paths, chunk: int = 1 << 20) -> str:
    """sha256 over the files' bytes in order (one file: its own sha256), read a chunk at a time."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
    return digest.hexdigest()


def write_checksum(path: str | os.PathLike) -> Path:
    """Write ``<path>.sha256`` in ``sha256sum`` format beside ``path``."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    write_text(sidecar, f"{sha256_file(path)}  {path.name}\n")
    return sidecar


# ----------------------------------------------------------------------------------------------
# Checked inputs: data files against their sha256 sidecar
# ----------------------------------------------------------------------------------------------

class ChecksumMismatch(ValueError):
    """A file's sha256 differs from the one recorded for it (sidecar or header): it is refused."""


class UnsafeFileError(ValueError):
    """A file that should be safetensors is not (a pickle, a truncated or corrupted file): it is refused."""


def checksum_path(path: str | os.PathLike) -> Path:
    """``data/moons.npz`` -> ``data/moons.npz.sha256`` (the sidecar :func:`write_checksum` writes)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def expected_checksum(path: str | os.PathLike) -> str:
    """The sha256 recorded for ``path`` in its ``sha256sum``-format sidecar."""
    sidecar = checksum_path(path)
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise FileNotFoundError(f"{sidecar}: missing; re-run `flowrepro acquire` to write {Path(path).name} "
                                "and its checksum") from None
    fields = text.split()
    digest = fields[0].lower() if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ChecksumMismatch(f"{sidecar}: not a sha256sum line ('<64 hex>  <name>'): {text[:80]!r}; "
                               "re-run `flowrepro acquire`")
    return digest


def load_data(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a dataset ``data/<name>.npz``, after checking them against ``<name>.npz.sha256``.

    The bytes hashed are the bytes read (one open file), so a file swapped in between cannot slip
    through. Raises :class:`ChecksumMismatch` naming the file and both hashes, FileNotFoundError if
    the file or its sidecar is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (has its acquire job run?)")
    expected = expected_checksum(path)
    with open(path, "rb") as handle:
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumMismatch(f"{path}: sha256 {actual} does not match {expected} recorded in "
                                   f"{checksum_path(path)}; the file is corrupted or was changed after "
                                   "`flowrepro acquire` wrote it; refusing to read it")
        handle.seek(0)
        with np.load(handle, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


def write_table(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write tidy metric rows as CSV with exactly :data:`TIDY_COLUMNS` (missing cells empty)."""
    import pandas as pd

    for i, row in enumerate(rows):
        unknown = set(row) - set(TIDY_COLUMNS)
        if unknown:
            raise KeyError(f"row {i} of {path} has columns outside the tidy format: {sorted(unknown)}")
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    write_text(path, frame.to_csv(index=False))


def read_table(path: str | os.PathLike):
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = set(TIDY_COLUMNS) - set(frame.columns)
    if missing:
        raise KeyError(f"{path}: not a tidy metrics table, missing columns {sorted(missing)}")
    return frame


# The safetensors formats live in their own module; they are re-exported here, where every stage
# looks for them (imported last: that module uses atomic_path and the error classes above).
from flowrepro.tensor_files import (DIGEST_KEY, METADATA_KEY, load_model_file, load_tensors, load_tree,  # noqa: E402,F401
                                    save_model_file, save_tensors, save_tree)
