"""Pretrained weights the workflow acquires: public address, file name and pinned sha256.

Nothing is downloaded at run time. ``flowrepro acquire --weights NAME`` (the workflow's
``acquire_weights`` rule) fetches one set of files into ``data/weights/<name>/`` through
:func:`flowrepro.data.download.download` (retries, no partial file, a checksum error naming the
file and both hashes) and then writes the manifest ``data/weights/<name>/<name>.sha256`` in
``sha256sum`` format (``cd data/weights/<name> && sha256sum -c <name>.sha256`` checks it by hand).
Every later read goes through :func:`read_verified`: the bytes read are the bytes hashed, and a
file whose sha256 differs from its manifest is refused before anything uses it.

A file whose sha256 could not be taken from a source we trust is listed with ``sha256=None``:
``acquire`` refuses it unless the user gives the digest of a copy they trust (``--digest
FILE=HEX``, or ``downloads: {digests: ...}`` in a scale file). There is no trust on first use.
``--mirror`` (a base URL or a local directory holding the files under their names) stands in for
the public address, as it does for the datasets.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from flowrepro.data.download import DigestError, Resource, download, mirror_url

#: Where acquired weights live: data/weights/<name>/<file> and the manifest <name>.sha256 beside them.
WEIGHTS_ROOT = Path("data/weights")


class UnpinnedFileError(DigestError):
    """A file of a weights set has no pinned sha256 and the user gave none: it is not fetched."""


@dataclass(frozen=True)
class WeightsFile:
    """One file of a set: its name (at the source and on disk) and its sha256 (None: not pinned)."""

    name: str
    sha256: str | None


@dataclass(frozen=True)
class WeightsSet:
    """Files fetched together from one public address (``base_url`` + file name).

    ``files`` are all fetched; of ``one_of`` (the same weights in other formats, best first) only
    the first that has a digest, pinned or given, is fetched.
    """

    name: str
    description: str
    base_url: str
    files: tuple[WeightsFile, ...]
    one_of: tuple[WeightsFile, ...] = ()

    def candidates(self) -> tuple[WeightsFile, ...]:
        return self.files + self.one_of


FID_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"

WEIGHTS: dict[str, WeightsSet] = {
    "fid_inception": WeightsSet(
        name="fid_inception",
        description="FID InceptionV3 (TensorFlow 2015-12-05 graph), torch-fidelity's state dict; "
                    "loads into flowrepro.metrics.inception.build_fid_inception",
        base_url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/",
        # sha256 as recorded in a public repository's notes; its first 8 hex digits are the 6726825d
        # that torch.hub's naming convention puts in the file name (the prefix torch.hub checks).
        files=(WeightsFile(FID_INCEPTION_FILE, "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"),),
    ),
    "ddpm_cifar10_pretrained": WeightsSet(
        name="ddpm_cifar10_pretrained",
        description="google/ddpm-cifar10-32 in diffusers format (the CIFAR-10 DDPM that DDIM and PNDM "
                    "evaluated on): UNet2DModel config, weights, DDPMScheduler config",
        # A revision id, not a branch: the hub serves the same bytes for it forever.
        base_url="https://huggingface.co/google/ddpm-cifar10-32/resolve/30eb34ce06e995c15ec349bc188a86d6bd0d5359/",
        # No sha256 of these files could be found offline: the user supplies them (see module docstring).
        files=(WeightsFile("config.json", None), WeightsFile("scheduler_config.json", None)),
        # safetensors first: the .bin is a pickle, loaded only with torch.load(weights_only=True)
        one_of=(WeightsFile("diffusion_pytorch_model.safetensors", None), WeightsFile("diffusion_pytorch_model.bin", None)),
    ),
}


def weights_set(name: str) -> WeightsSet:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}") from None


def weights_dir(name: str, root: str | os.PathLike = WEIGHTS_ROOT) -> Path:
    return Path(root) / weights_set(name).name


def manifest_path(directory: str | os.PathLike) -> Path:
    """``data/weights/fid_inception`` -> ``data/weights/fid_inception/fid_inception.sha256``."""
    directory = Path(directory)
    return directory / f"{directory.name}.sha256"


def _check_sha256(filename: str, digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise DigestError(f"digest for {filename}: weights files are pinned by sha256 (64 hex characters), "
                          f"got {digest!r}")
    return digest.lower()


def digests_for(name: str, digests: dict[str, str] | None = None) -> dict[str, str]:
    """File name -> sha256 of every file of the set that will be fetched (pinned, or given in ``digests``).

    Raises :class:`DigestError` for a digest that names no file of the set or is not a sha256, and
    :class:`UnpinnedFileError`, naming each file and how to get its digest, when a file to fetch has none.
    """
    chosen = weights_set(name)
    given = {file: _check_sha256(file, value) for file, value in (digests or {}).items()}
    known = [f.name for f in chosen.candidates()]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise DigestError(f"{name}: a digest was given for {', '.join(unknown)}, which {name} does not have; "
                          f"its files are {', '.join(known)}")
    resolved = {f.name: given.get(f.name, f.sha256) for f in chosen.candidates()}
    missing = [f.name for f in chosen.files if resolved[f.name] is None]
    formats = [f.name for f in chosen.one_of if resolved[f.name] is not None]
    if chosen.one_of and not formats:
        missing.append(" or ".join(f.name for f in chosen.one_of))
    if missing:
        flags = " ".join(f"--digest {f.split(' or ')[0]}=<sha256>" for f in missing)
        raise UnpinnedFileError(
            f"{name}: no sha256 is pinned for {', '.join(missing)}, and flowrepro never trusts a file on first "
            f"use. Give the sha256 of a copy you trust: {flags} (e.g. `sha256sum FILE` of a copy you downloaded "
            f"from {chosen.base_url} and checked; for large files the hub's page also lists the sha256), or "
            f"`downloads: {{digests: {{FILE: HEX}}}}` in the scale file")
    fetched = {f.name: resolved[f.name] for f in chosen.files}
    if formats:
        fetched[formats[0]] = resolved[formats[0]]
    return fetched


def expected_sha256(name: str, filename: str, digests: dict[str, str] | None = None) -> str:
    """The sha256 ``filename`` of set ``name`` will have once acquired with these ``digests``."""
    return digests_for(name, digests)[filename]


def acquire(name: str, out_dir: str | os.PathLike | None = None, mirror: str | None = None,
            digests: dict[str, str] | None = None, retries: int = 3) -> Path:
    """Fetch the files of weights set ``name`` into ``out_dir`` (default ``data/weights/<name>``), each
    checked against its sha256 as it arrives, then write the manifest; return the manifest's path.

    Everything is checked before anything is fetched (a missing digest costs no download). The
    manifest is written last and atomically: it exists only when every file arrived intact.
    """
    from flowrepro import io

    chosen = weights_set(name)
    fetched = digests_for(name, digests)
    directory = Path(out_dir) if out_dir is not None else weights_dir(name)
    base = mirror_url(mirror) if mirror else chosen.base_url
    lines = []
    for filename, sha256 in fetched.items():
        download(Resource(base + filename, filename, sha256, "sha256"), directory, retries=retries)
        lines.append(f"{sha256}  {filename}\n")
    manifest = manifest_path(directory)
    io.write_text(manifest, "".join(lines))
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """File name -> sha256 recorded in ``directory``'s manifest."""
    from flowrepro.io import ChecksumMismatch

    manifest = manifest_path(directory)
    try:
        text = manifest.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest}: missing; acquire the weights first (`flowrepro acquire --weights "
                                f"{Path(directory).name}`)") from None
    recorded = {}
    for line in text.splitlines():
        digest, _, filename = line.partition("  ")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not filename:
            raise ChecksumMismatch(f"{manifest}: not a sha256sum line ('<64 hex>  <name>'): {line[:80]!r}")
        recorded[filename] = digest
    return recorded


def recorded_sha256(path: str | os.PathLike, required: bool = True) -> str | None:
    """The sha256 the manifest of ``path``'s folder records for it.

    ``required=False``: None when the folder has no manifest (a weights file the user placed by hand);
    a manifest that exists but does not list the file is an error either way.
    """
    path = Path(path)
    if not required and not manifest_path(path.parent).exists():
        return None
    recorded = read_manifest(path.parent)
    if path.name not in recorded:
        raise FileNotFoundError(f"{manifest_path(path.parent)} does not list {path.name}; re-run `flowrepro acquire "
                                f"--weights {path.parent.name}`")
    return recorded[path.name]


def read_verified(path: str | os.PathLike, sha256: str | None = None) -> bytes:
    """The bytes of ``path`` after checking their sha256 against ``sha256`` (default: its manifest's).

    Raises :class:`flowrepro.io.ChecksumMismatch` naming the file and both hashes: a corrupted or
    swapped weights file is refused before any code reads it.
    """
    from flowrepro.io import ChecksumMismatch

    path = Path(path)
    expected = sha256 if sha256 is not None else recorded_sha256(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; acquire it first (`flowrepro acquire --weights "
                                f"{path.parent.name}`)") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumMismatch(f"{path}: sha256 {actual} does not match {expected} recorded for it; the file is "
                               "corrupted or was replaced after it was acquired; refusing to read it")
    return data


def scale_weights(scale: dict) -> list[str]:
    """The weights sets a scale acquires (``downloads: {weights: [...]}``)."""
    return list(scale.get("downloads", {}).get("weights", []))


def download_flags(scale: dict, name: str) -> str:
    """``--mirror``/``--digest`` flags for weights set ``name`` from the scale's ``downloads:`` section."""
    downloads = scale.get("downloads", {})
    own = {f.name for f in weights_set(name).candidates()}
    flags = [f"--mirror '{downloads['mirror']}'"] if "mirror" in downloads else []
    flags += [f"--digest {file}={digest}" for file, digest in sorted(downloads.get("digests", {}).items()) if file in own]
    return " ".join(flags)


def scale_digests(scale: dict, name: str) -> dict[str, str]:
    """The scale's digest overrides for the files of weights set ``name``."""
    own = {f.name for f in weights_set(name).candidates()}
    return {file: value for file, value in scale.get("downloads", {}).get("digests", {}).items() if file in own}
