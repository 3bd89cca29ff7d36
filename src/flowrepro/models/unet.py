"""UNet velocity (or noise) networks for images: diffusers' ``UNet2DModel`` with t in [0, 1].

One preset table names the networks the scales and the papers' recipes use (EDM keeps one such
table too). A scale or recipe gives ``network:`` as a preset name, or as a mapping of the
:class:`UNetPreset` fields (optionally ``preset:`` plus the fields it changes).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from flowrepro.registry import MODELS


@dataclass(frozen=True)
class UNetPreset:
    """A ``UNet2DModel`` layout: one resolution level per entry of ``channels``, each halving H and W."""

    channels: tuple[int, ...]
    layers_per_block: int = 1
    attention_resolutions: tuple[int, ...] = ()  # feature-map sizes (e.g. 16 for 16x16) with self-attention
    dropout: float = 0.0
    norm_groups: int | None = None               # None: min(8, smallest width), as the tiny network has always used
    ddpm_embedding: bool = False                 # DDPM's sinusoid layout (flip_sin_to_cos off, shift 1, eps 1e-6)
    parameters_m: float | None = None            # the paper's parameter count (millions), checked by a test
    source: str = ""
    extra: dict = field(default_factory=dict)


NETWORKS: dict[str, UNetPreset] = {
    "unet_tiny": UNetPreset(channels=(16, 32), source="flowrepro's tiny scale: two levels, sized for 8x8 digits on a CPU"),
    "unet_smoke": UNetPreset(channels=(8, 16), source="unit tests: the tiny layout at half width"),
    "ddpm_mnist": UNetPreset(
        channels=(64, 128, 128, 128), layers_per_block=2, attention_resolutions=(16,), dropout=0.1, norm_groups=32,
        ddpm_embedding=True,
        source="our choice, no paper here trains on 32x32 MNIST with a published network: DDPM's CIFAR-10 UNet "
               "at half width (8.95 M)"),
    "ddpm_cifar10": UNetPreset(
        channels=(128, 256, 256, 256), layers_per_block=2, attention_resolutions=(16,), dropout=0.1, norm_groups=32,
        ddpm_embedding=True, parameters_m=35.75,
        source="Ho et al. 2020 App. B (ch 128, mult (1,2,2,2), 2 res blocks, attention at 16x16, dropout 0.1); "
               "diffusers google/ddpm-cifar10-32 config.json; torchcfm's CIFAR-10 UNet (35.7 M)"),
}


def resolve_network(network: str | dict) -> UNetPreset:
    """A preset by name, or a mapping of :class:`UNetPreset` fields (``preset:`` names a base)."""
    if isinstance(network, str):
        if network not in NETWORKS:
            raise KeyError(f"unknown network preset {network!r}; known: {sorted(NETWORKS)}")
        return NETWORKS[network]
    options = dict(network)
    base = resolve_network(options.pop("preset")) if "preset" in options else None
    known = {f.name for f in fields(UNetPreset)} - {"extra"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise KeyError(f"network options {unknown} are not UNet fields; known: {sorted(known)}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return replace(base, **options) if base else UNetPreset(**options)


def build_unet(shape: tuple[int, int, int], network: str | dict | UNetPreset = "unet_tiny", in_channels: int | None = None,
               class_embeddings: int | None = None):
    """A UNet on (C, H, W) images laid out as ``network``; ``in_channels`` when the input has more
    channels than the C it outputs (CAF's acceleration net reads [x, v0], 2C); ``class_embeddings``:
    a learned embedding per class label, added to the time embedding (diffusers' ``num_class_embeds``),
    and ``forward(x, t, labels)`` (:class:`flowrepro.generative.conditioning.ClassConditional`).

    Each level halves H and W, so H and W must be divisible by 2^(levels - 1). The flow time
    t in [0, 1] is fed as diffusers' timestep 1000 t (its sinusoidal embedding expects that range).
    """
    from diffusers import UNet2DModel
    from torch import nn

    preset = network if isinstance(network, UNetPreset) else resolve_network(network)
    channels = tuple(preset.channels)
    channels_out, height, width = shape
    factor = 2 ** (len(channels) - 1)
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not divisible by {factor} ({len(channels)} UNet levels)")
    resolutions = [height // 2 ** level for level in range(len(channels))]
    missing = sorted(set(preset.attention_resolutions) - set(resolutions))
    if missing:
        raise ValueError(f"attention at {missing} but a {height}x{width} UNet has levels {resolutions}")
    attention = [r in preset.attention_resolutions for r in resolutions]
    options = dict(sample_size=(height, width), in_channels=in_channels or channels_out, out_channels=channels_out,
                   block_out_channels=channels, layers_per_block=preset.layers_per_block,
                   down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
                   up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
                   norm_num_groups=preset.norm_groups or min(8, min(channels)))
    if preset.dropout:
        options["dropout"] = preset.dropout
    if class_embeddings:
        options["num_class_embeds"] = class_embeddings
    if preset.ddpm_embedding:  # the layout of DDPM's own checkpoint (google/ddpm-cifar10-32)
        options.update(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, attention_head_dim=None)

    class VelocityUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = UNet2DModel(**options, **preset.extra)

        def forward(self, x, t, labels=None):
            t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
            return self.unet(x, 1000 * t, class_labels=labels).sample

    return VelocityUNet()


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


MODELS.register("unet")(build_unet)
