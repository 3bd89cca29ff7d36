"""A pretrained diffusers ``UNet2DModel`` (google/ddpm-cifar10-32) from acquired, sha256-checked files.

``flowrepro acquire --weights ddpm_cifar10_pretrained`` writes ``config.json``,
``scheduler_config.json`` and one weights file (``diffusion_pytorch_model.safetensors``, or the
``.bin`` where only that was given a digest) with their manifest (:mod:`flowrepro.data.weights`).
Here every file is read through :func:`flowrepro.data.weights.read_verified` and the network is
built from those bytes, never by diffusers' ``from_pretrained`` re-opening the files. A ``.bin``
is a pickle: it is loaded only with ``torch.load(weights_only=True)``, which refuses any object
that is not a tensor container; safetensors is preferred where both are present.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

SAFETENSORS, PICKLE = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"


def _state_dict(path: Path) -> dict:
    import torch

    from flowrepro.data.weights import read_verified

    data = read_verified(path)
    if path.name == SAFETENSORS:
        from safetensors.torch import load

        return load(data)
    # weights_only: a pickle that holds anything but tensors and plain containers is refused
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_pretrained_unet(directory: str | os.PathLike, device: str = "cpu"):
    """``(unet, scheduler_config)``: the ``UNet2DModel`` and the scheduler's config dict of an acquired
    diffusers model folder, every file checked against the folder's manifest first."""
    from diffusers import UNet2DModel

    from flowrepro.data.weights import read_manifest, read_verified

    directory = Path(directory)
    recorded = read_manifest(directory)
    weights = next((directory / name for name in (SAFETENSORS, PICKLE) if name in recorded), None)
    if weights is None:
        raise FileNotFoundError(f"{directory}: its manifest lists neither {SAFETENSORS} nor {PICKLE}")
    config = json.loads(read_verified(directory / "config.json"))
    scheduler = json.loads(read_verified(directory / "scheduler_config.json"))
    unet = UNet2DModel.from_config(config)
    state = _state_dict(weights)
    fix = getattr(unet, "_fix_state_dict_keys_on_load", None)
    if fix is not None:  # diffusers' own renaming of old attention keys (query/key/value -> to_q/to_k/to_v)
        state = fix(dict(state))
    unet.load_state_dict(state, strict=True)
    return unet.to(device).eval().requires_grad_(False), scheduler
