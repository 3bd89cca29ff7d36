"""Atomic writes, checksums and the one tidy table format every stage writes.

Every output goes to a temporary file in the same directory and is renamed into place,
so a killed job never leaves a complete-looking file behind.
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
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
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
