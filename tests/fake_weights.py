"""Generated stand-ins for the acquirable weights (flowrepro.data.weights), in the real formats.

- a FID-Inception state dict of the full network (every key and shape of ``build_fid_inception()``,
  random weights, 24 M floats, about 95 MB), under the real file name: it loads and runs exactly
  as the published file would; its digest is passed as an override, as for the generated archives;
- a tiny diffusers ``UNet2DModel`` saved with ``save_pretrained`` (safetensors or .bin) beside a
  DDPMScheduler config, laid out as google/ddpm-cifar10-32's files.

Tests import it as ``from fake_weights import ...`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from flowrepro.data.weights import FID_INCEPTION_FILE


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_random_inception(path: str | Path, seed: int = 0) -> Path:
    """A randomly initialised FID-Inception state dict (He-normal convolutions: features stay O(1))."""
    import torch

    from flowrepro.metrics.inception import build_fid_inception

    torch.manual_seed(seed)
    network = build_fid_inception()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def write_inception_format(path: str | Path, seed: int = 0) -> Path:
    """A small file in the Inception weights' format: every key of ``build_fid_inception()``'s state dict,
    each holding one random number (where only the format matters: caching, checksums)."""
    import torch

    from flowrepro.metrics.inception import build_fid_inception

    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(1, generator=generator) for key in build_fid_inception().state_dict()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def random_inception_in(directory: str | Path, tmp_path_factory) -> tuple[Path, str]:
    """Copy the session's random Inception file (generated once per test session, in pytest's base temp
    folder) into ``directory`` under the published file name; return ``(path, sha256)``."""
    cached = tmp_path_factory.getbasetemp() / "fake_weights" / FID_INCEPTION_FILE
    if not cached.exists():
        staging = write_random_inception(cached.with_suffix(".part"))
        staging.rename(cached)  # complete or absent: another test never sees half a file
    target = Path(directory) / FID_INCEPTION_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, target)
    return target, sha256_file(target)


SCHEDULER_CONFIG = {"_class_name": "DDPMScheduler", "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                    "num_train_timesteps": 1000, "clip_sample": True, "variance_type": "fixed_small"}


def write_tiny_ddpm(directory: str | Path, safetensors: bool = True, seed: int = 0, sample_size: int = 8) -> dict[str, str]:
    """A tiny ``UNet2DModel`` (``sample_size`` square, two levels, one attention block) in diffusers' layout: ``config.json``,
    ``diffusion_pytorch_model.safetensors`` (or ``.bin``) and ``scheduler_config.json``; returns
    {file name: sha256}."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    directory = Path(directory)
    unet.save_pretrained(directory, safe_serialization=safetensors)
    (directory / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}
