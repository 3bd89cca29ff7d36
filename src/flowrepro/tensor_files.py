"""Files that cannot run code: safetensors + JSON metadata, with a sha256 of the contents in the header.

Trained models, training checkpoints and classifiers are written here (:func:`save_tree`, a nested
structure flattened into tensor keys such as ``seeds/0/state_dict/net.0.weight`` plus a JSON
skeleton). :func:`load_tensors` refuses anything else (a pickle, a truncated file) with
:class:`flowrepro.io.UnsafeFileError`, and a file whose contents no longer match the sha256
recorded in its header with :class:`flowrepro.io.ChecksumMismatch`. :mod:`flowrepro.io` re-exports
every name, so callers use ``io.save_tree`` and friends.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from flowrepro.io import ChecksumMismatch, UnsafeFileError, atomic_path

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
    """Write a train output (``key``, ``dataset``, ``model``, ``shape``, ``spec``, ``settings``,
    ``plugins``, ``steps``, ``seeds`` {seed: {state_dict, ema_state_dict?, losses, wall_s}},
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
