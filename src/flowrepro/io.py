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
import json
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


# ----------------------------------------------------------------------------------------------
# Safe tensor files: safetensors + JSON metadata, with a sha256 of the contents in the header
# ----------------------------------------------------------------------------------------------

#: Header metadata keys of the safetensors files written here.
METADATA_KEY, DIGEST_KEY = "flowrepro", "flowrepro_sha256"


def _tensor_bytes(tensor) -> memoryview:
    import torch

    flat = tensor.detach().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _content_digest(tensors: dict, metadata_text: str) -> str:
    """sha256 over the metadata JSON and, in key order, each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(metadata_text.encode("utf-8"))
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"\0{key}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode("utf-8"))
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict) -> None:
    """Write ``tensors`` (name -> tensor) as one safetensors file, atomically; ``metadata`` (JSON-able)
    goes to the header as ``{"flowrepro": json.dumps(metadata)}`` with the sha256 of the contents."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    plain = {}
    for key, value in tensors.items():
        tensor = value.detach().to("cpu").contiguous()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen or tensor.storage_offset() or tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.clone()  # safetensors refuses tensors that share or view part of a storage
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        plain[str(key)] = tensor
    text = json.dumps(metadata, allow_nan=True)
    header = {METADATA_KEY: text, DIGEST_KEY: _content_digest(plain, text)}
    with atomic_path(path) as tmp:
        save_file(plain, tmp, metadata=header)


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a file written by :func:`save_tensors`; nothing in it is executed.

    Raises :class:`UnsafeFileError` (naming the file) for anything that is not such a safetensors
    file, e.g. a pickle, and :class:`ChecksumMismatch` (naming the file and both hashes) when a
    tensor or the metadata no longer matches the sha256 recorded at writing.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (has the job that writes it run?)")

    def refuse(why: str) -> UnsafeFileError:
        return UnsafeFileError(f"{path}: not a safetensors file (a pickle or a corrupted file?); refusing to load it "
                               f"({why})")

    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":  # 8 bytes of header length, then the JSON header
        raise refuse("it starts like a zip archive or a pickle, as torch.save writes" if head[:2] == b"PK" or head[:1] == b"\x80"
                     else "no safetensors header")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors' own errors (header too large, offsets, dtype) and OS errors
        raise refuse(f"{type(error).__name__}: {error}") from None
    if METADATA_KEY not in header or DIGEST_KEY not in header:
        raise refuse(f"a safetensors file, but without flowrepro's {METADATA_KEY!r}/{DIGEST_KEY!r} metadata")
    text, expected = header[METADATA_KEY], header[DIGEST_KEY]
    actual = _content_digest(tensors, text)
    if actual != expected:
        raise ChecksumMismatch(f"{path}: sha256 of its contents is {actual}, but the file records {expected}; "
                               "the file is corrupted; refusing to load it")
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise refuse(f"metadata is not JSON: {error}") from None
    if device != "cpu":
        tensors = {key: value.to(device) for key, value in tensors.items()}
    return tensors, metadata


#: Lists of at least this many Python floats (loss histories) are stored as float64 tensors.
_FLOAT_LIST_MIN = 32


def _flatten(obj: Any, key: str, tensors: dict) -> Any:
    """The JSON skeleton of ``obj``; its tensors go to ``tensors`` under their path (``a/b/c``)."""
    import torch

    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise ValueError(f"two tensors at {key!r} (a dict key with '/' in it?)")
        tensors[key] = obj
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and type(obj) in (int, float):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        if (len(obj) >= _FLOAT_LIST_MIN and all(type(x) is float for x in obj)
                and isinstance(obj, list)):
            return {"__floats__": _flatten(torch.tensor(obj, dtype=torch.float64), key, tensors)}
        items = [_flatten(value, f"{key}/{i}", tensors) for i, value in enumerate(obj)]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, f"{key}/{k}" if key else k, tensors) for k, v in obj.items()}
        if not all(type(k) in (str, int) for k in obj):
            raise TypeError(f"{key or 'top level'}: dict keys must be str or int, got {sorted(map(repr, obj))[:5]}")
        return {"__items__": [[k, _flatten(v, f"{key}/{k}" if key else str(k), tensors)] for k, v in obj.items()]}
    raise TypeError(f"{key or 'top level'}: cannot store a {type(obj).__name__} in a safe tensor file "
                    "(tensors, numbers, strings, lists, tuples and dicts only)")


def _unflatten(obj: Any, tensors: dict, path: Path) -> Any:
    if isinstance(obj, list):
        return [_unflatten(value, tensors, path) for value in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        try:
            return tensors[obj["__tensor__"]]
        except KeyError:
            raise UnsafeFileError(f"{path}: metadata names tensor {obj['__tensor__']!r}, which the file lacks") from None
    if "__floats__" in obj:
        return _unflatten(obj["__floats__"], tensors, path).tolist()
    if "__tuple__" in obj:
        return tuple(_unflatten(value, tensors, path) for value in obj["__tuple__"])
    if "__items__" in obj:
        return {key: _unflatten(value, tensors, path) for key, value in obj["__items__"]}
    return {key: _unflatten(value, tensors, path) for key, value in obj.items()}


def save_tree(path: str | os.PathLike, obj: Any, kind: str) -> None:
    """Write a nested structure of dicts (str or int keys), lists, tuples, numbers, strings and
    tensors as a safetensors file (:func:`save_tensors`); :func:`load_tree` gives it back exactly
    (tuples as tuples, int keys as ints, float lists as float lists). ``kind`` ("model",
    "checkpoint", "classifier") is recorded, and checked on loading."""
    tensors: dict = {}
    skeleton = _flatten(obj, "", tensors)
    save_tensors(path, tensors, {"format": "flowrepro-tree/1", "kind": kind, "tree": skeleton})


def load_tree(path: str | os.PathLike, kind: str, device: str = "cpu") -> Any:
    """The structure :func:`save_tree` wrote to ``path`` (refused unless it is a ``kind`` file)."""
    tensors, metadata = load_tensors(path, device)
    if not isinstance(metadata, dict) or metadata.get("format") != "flowrepro-tree/1" or "tree" not in metadata:
        raise UnsafeFileError(f"{path}: a safetensors file, but not one flowrepro wrote (no flowrepro-tree/1 metadata)")
    if metadata.get("kind") != kind:
        raise ValueError(f"{path}: a {metadata.get('kind')} file, expected a {kind} file")
    return _unflatten(metadata["tree"], tensors, Path(path))


def save_model_file(path: str | os.PathLike, result: dict) -> None:
    """Write a train output (``experiment``, ``dataset``, ``model``, ``shape``, ``spec``,
    ``settings``, ``steps``, ``seeds`` {seed: {state_dict, ema_state_dict?, losses, wall_s}},
    ``data_var``) as safetensors + JSON; tensors under ``seeds/<seed>/state_dict/<param>``."""
    save_tree(path, result, "model")


def load_model_file(path: str | os.PathLike, device: str = "cpu") -> dict:
    """The dict :func:`save_model_file` wrote (``shape`` a tuple, seeds as int keys)."""
    info = load_tree(path, "model", device)
    missing = {"dataset", "model", "shape", "settings", "seeds"} - set(info)
    if missing:
        raise ValueError(f"{path}: not a flowrepro model file, missing {sorted(missing)}")
    info["shape"] = tuple(info["shape"])
    return info


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
