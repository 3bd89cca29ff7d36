"""A pretrained diffusers ``UNet2DModel`` (google/ddpm-cifar10-32) from acquired, sha256-checked files.

``flowrepro acquire --weights ddpm_cifar10_pretrained`` writes ``config.json``,
``scheduler_config.json`` and one weights file (``diffusion_pytorch_model.safetensors``, or the
``.bin`` where only that was given a digest) with their manifest (:mod:`flowrepro.data.weights`).
Here every file is read through :func:`flowrepro.data.weights.read_verified` and the network is
built from those bytes, never by diffusers' ``from_pretrained`` re-opening the files. A ``.bin``
is a pickle: it is loaded only with ``torch.load(weights_only=True)``, which refuses any object
that is not a tensor container; safetensors is preferred where both are present.

:func:`load_pretrained_models` presents the network as the sample stage's models: an eps-model of
the discrete DDPM path (:class:`flowrepro.generative.paths.DiscreteVPPath`) built from the folder's
scheduler config, called at training step k = 999 (1 - t), the step every diffusers scheduler asks
for, so each sampler sees the network exactly as DDIM's and PNDM's papers did.
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


#: The scheduler-config keys that define the path, and the only values :class:`DiscreteVPPath` takes.
SCHEDULE_KEYS = {"beta_schedule": "linear", "prediction_type": "epsilon"}


def discrete_path(scheduler: dict, source: str):
    """The :class:`DiscreteVPPath` of a DDPMScheduler config; an error naming the key where it is another schedule."""
    from flowrepro.generative.paths import DiscreteVPPath

    for key, value in SCHEDULE_KEYS.items():
        if scheduler.get(key, value) != value:
            raise ValueError(f"{source}: {key} = {scheduler[key]!r}; only {value!r} models are supported (the "
                             f"samplers' training schedule, flowrepro.samplers.diffusion.TRAIN_CONFIG)")
    return DiscreteVPPath(int(scheduler.get("num_train_timesteps", 1000)), float(scheduler.get("beta_start", 1e-4)),
                          float(scheduler.get("beta_end", 0.02)))


class DiscreteTimeEpsilon:
    """``(x, t) -> eps``: the UNet at its training step ``path.timestep(t)`` (a float where t is between steps)."""

    def __init__(self, unet, path) -> None:
        self.unet, self.path = unet, path

    def __call__(self, x, t):
        import torch

        with torch.no_grad():
            return self.unet(x, self.path.timestep(t).to(x.dtype)).sample


def load_pretrained_models(directory: str | os.PathLike, name: str, data_file: str, seeds: list[int], device: str = "cpu"):
    """``(info, {seed: model})`` as :func:`flowrepro.stages.train.load_models` returns them: one network for
    every seed (the seeds differ in their sampling noise only), an eps-model of its discrete path.

    ``data_file`` is the dataset it generates: its image shape must be the network's, and its training
    images give ``data_var`` (what the time-shift samplers match)."""
    from flowrepro import io
    from flowrepro.generative.parameterization import AsVelocity
    from flowrepro.samplers.diffusion import TRAIN_CONFIG

    unet, scheduler = load_pretrained_unet(directory, device)
    path = discrete_path(scheduler, f"{directory}/scheduler_config.json")
    if (path.num_train_timesteps, path.beta_start, path.beta_end) != (
            TRAIN_CONFIG["num_train_timesteps"], TRAIN_CONFIG["beta_start"], TRAIN_CONFIG["beta_end"]):
        raise ValueError(f"{directory}/scheduler_config.json: schedule {path}; the diffusers samplers here are "
                         f"built with {TRAIN_CONFIG} and would ask for other noise levels than this model's steps")
    train = io.load_data(data_file)["train"]
    config = unet.config
    shape = (int(config.in_channels), int(config.sample_size), int(config.sample_size))
    if tuple(train.shape[1:]) != shape:
        raise ValueError(f"{directory}: the network takes images {shape}, {data_file} holds {tuple(train.shape[1:])}")
    model = AsVelocity(DiscreteTimeEpsilon(unet, path), path)
    info = {"dataset": Path(data_file).name.removesuffix(".npz"), "shape": list(shape), "model": name,
            "spec": {"pretrained": Path(directory).name}, "data_var": float(train.reshape(len(train), -1).var(axis=0, ddof=1).mean())}  # as train records it
    return info, {seed: model for seed in seeds}
