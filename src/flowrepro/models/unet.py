"""UNet velocity (or noise) network for images: diffusers' ``UNet2DModel`` with t in [0, 1]."""
from __future__ import annotations

from flowrepro.registry import MODELS


def build_unet(shape: tuple[int, int, int], channels: list[int], layers_per_block: int = 1):
    """A UNet on (C, H, W) images, one resolution level per entry of ``channels``.

    Each level halves H and W, so H and W must be divisible by 2^(levels - 1). The flow time
    t in [0, 1] is fed as diffusers' timestep 1000 t (its sinusoidal embedding expects that range).
    """
    from diffusers import UNet2DModel
    from torch import nn

    in_channels, height, width = shape
    factor = 2 ** (len(channels) - 1)
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not divisible by {factor} ({len(channels)} UNet levels)")
    groups = min(8, min(channels))

    class VelocityUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = UNet2DModel(sample_size=(height, width), in_channels=in_channels, out_channels=in_channels,
                                    block_out_channels=tuple(channels), layers_per_block=layers_per_block,
                                    down_block_types=("DownBlock2D",) * len(channels),
                                    up_block_types=("UpBlock2D",) * len(channels), norm_num_groups=groups)

        def forward(self, x, t):
            t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
            return self.unet(x, 1000 * t).sample

    return VelocityUNet()


MODELS.register("unet")(build_unet)
