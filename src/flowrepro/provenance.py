"""Provenance of one experiment's results: which config, code, libraries and device made them.

Written as ``results/<experiment>/provenance.json`` beside ``metrics.csv`` by the stage that
writes the metrics (``write_for``), and shown per experiment in the report (``describe``). It
records no host name or user name, only what is needed to tell whether two result folders were
made by the same config, the same code and the same library versions.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from flowrepro import io

#: distribution name -> label in the report; versions are read from package metadata, so
#: nothing heavy (diffusers, POT: 5 s each) is imported just to ask its version.
PACKAGES = {
    "torch": "torch", "diffusers": "diffusers", "POT": "POT (ot)", "torchdiffeq": "torchdiffeq",
    "pytorch_optimizer": "pytorch_optimizer", "torchmetrics": "torchmetrics", "snakemake": "snakemake",
    "flowrepro": "flowrepro",
}
FILE_NAME = "provenance.json"


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_state(directory: str | Path = ".") -> dict[str, Any] | str:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``directory``, else "unknown"."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return {"commit": commit, "dirty": dirty}


def collect(experiment_file: str | Path, scale_file: str | Path, device: str | None = None,
            features: str | None = None) -> dict[str, Any]:
    """Everything that identifies how a result was made (see the module docstring).

    ``device``: where the work ran ("cpu", "cuda", ...; "auto" is resolved). ``features``: the image-quality
    features used, e.g. "fid_classifier: penultimate layer of the digits CNN"; None when the
    experiment measures no image quality.
    """
    if device == "auto":  # a preference, not a device: record where "auto" resolves to
        from flowrepro.config import pick_device

        device = pick_device("auto")
    experiment_sha, scale_sha = io.sha256_file(experiment_file), io.sha256_file(scale_file)
    return {
        "experiment_file": str(experiment_file),
        "experiment_sha256": experiment_sha,
        "scale_file": str(scale_file),
        "scale_sha256": scale_sha,
        "config_hash": hashlib.sha256(f"{experiment_sha}\n{scale_sha}".encode()).hexdigest()[:12],
        "versions": {"python": platform.python_version(), **{d: _version(d) for d in PACKAGES}},
        "platform": f"{platform.system()} {platform.machine()}",
        "git": git_state(),
        "device": device or "unknown",
        "features": features,
    }


def path_for(metrics_out: str | Path) -> Path:
    """``results/<experiment>/provenance.json`` for ``results/<experiment>/metrics.csv``."""
    return Path(metrics_out).parent / FILE_NAME


def write_for(metrics_out: str | Path, experiment_file: str | Path, scale_file: str | Path,
              device: str | None = None, features: str | None = None) -> Path:
    """Write :func:`collect`'s record atomically beside ``metrics_out``; returns its path."""
    target = path_for(metrics_out)
    record = collect(experiment_file, scale_file, device=device, features=features)
    io.write_text(target, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return target


def read_for(metrics_file: str | Path) -> dict[str, Any] | None:
    """The record beside ``metrics_file``, or None when none was written (or it is unreadable)."""
    try:
        return json.loads(path_for(metrics_file).read_text())
    except (OSError, ValueError):
        return None


def describe(record: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) lines for the report; one "not recorded" line when there is no record."""
    if not record:
        return [("provenance", "not recorded")]
    git = record.get("git")
    if isinstance(git, dict):
        commit = git.get("commit", "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    else:
        commit = str(git or "unknown")
    versions = record.get("versions", {})
    labels = {"python": "python", **PACKAGES}
    return [
        ("config hash", f"{record.get('config_hash', 'unknown')} (experiment sha256 "
                        f"{str(record.get('experiment_sha256', '?'))[:12]}, scale sha256 {str(record.get('scale_sha256', '?'))[:12]})"),
        ("git commit", commit),
        ("versions", ", ".join(f"{labels.get(k, k)} {v}" for k, v in versions.items())),
        ("device", str(record.get("device") or "unknown")),
        ("FID features", str(record.get("features") or "none (no image-quality metric)")),
    ]
