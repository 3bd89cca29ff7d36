"""Downloads with checksum verification, retries and no partial files left behind.

Only the ``acquire`` stage calls this, and only for paper-scale datasets (MNIST, CIFAR-10).
Tests point it at a local HTTP server; a local directory (a ``file://`` URL) can stand in for
the network too.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# hex length of a digest -> the algorithm that produces it
DIGEST_ALGORITHMS = {32: "md5", 64: "sha256"}


class ChecksumError(RuntimeError):
    """A downloaded file's digest differs from the published one."""


class DigestError(ValueError):
    """A digest override is malformed or names a file the dataset does not download."""


@dataclass(frozen=True)
class Resource:
    """One file to fetch: where from, its name on disk and its published digest."""

    url: str
    filename: str
    digest: str
    algorithm: str = "md5"


def digest_algorithm(filename: str, digest: str) -> str:
    """The algorithm of a hex ``digest`` given for ``filename``, told by its length (md5 or sha256)."""
    algorithm = DIGEST_ALGORITHMS.get(len(digest))
    if algorithm is None or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise DigestError(f"digest for {filename}: {digest!r} is neither an md5 (32 hex characters) "
                          f"nor a sha256 (64 hex characters)")
    return algorithm


def mirror_url(mirror: str | os.PathLike) -> str:
    """A base URL ending in '/', from a URL or a local directory (which becomes a file:// URL)."""
    text = os.fspath(mirror)
    if "://" not in text:
        # A plain path: urllib fetches local files through file:// URLs.
        text = Path(text).expanduser().resolve().as_uri()
    return text if text.endswith("/") else text + "/"


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(resource: Resource, directory: str | os.PathLike, retries: int = 3,
             backoff_s: float = 1.0, timeout_s: float = 60.0) -> Path:
    """Fetch ``resource`` into ``directory`` and verify it; return the final path.

    A file already present with the right digest is kept. The download streams into a temp
    file that is renamed only after its digest matches; on a mismatch the temp file is deleted
    and :class:`ChecksumError` names the URL and both digests. Network errors are retried;
    a ``file://`` URL is tried once, since a missing local file does not appear on retry.
    """
    if urllib.parse.urlparse(resource.url).scheme == "file":
        retries = 1
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / resource.filename
    if target.exists() and file_digest(target, resource.algorithm) == resource.digest:
        return target
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{resource.filename}.", suffix=".part", dir=directory)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.new(resource.algorithm)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(resource.url, timeout=timeout_s) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            got = digest.hexdigest()
            if got != resource.digest:
                # A wrong file is not a transient error: do not retry it.
                raise ChecksumError(
                    f"{resource.url}: {resource.algorithm} mismatch, expected {resource.digest}, got {got}; "
                    f"nothing was written to {target}"
                )
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            last_error = error
            if attempt < retries:
                time.sleep(backoff_s * 2 ** (attempt - 1))
        finally:
            if tmp.exists():
                tmp.unlink()
    attempts = f"{retries} attempt{'s' if retries > 1 else ''}"
    raise RuntimeError(f"{resource.url}: download failed after {attempts}: {last_error}") from last_error
