"""ResNet-20 for CIFAR-10 (He et al., "Deep Residual Learning", CVPR 2016, Sec. 4.2), written out
here so that nothing needs torchvision.

The CIFAR ResNets are 6n + 2 layers deep: a 3x3 conv to 16 maps, three stages of n basic blocks
(two 3x3 convs each) at 16, 32 and 64 maps on 32x32, 16x16 and 8x8 (the first block of stages
2 and 3 has stride 2), global average pooling and a 10-way linear layer. n = 3 gives ResNet-20.

Shortcuts where the shape changes: ``"conv"`` (1x1 conv + BN, He et al.'s option B; the
ADAHESSIAN code, github.com/amirgholami/adahessian models/resnet.py, uses this one:
272,474 parameters) or ``"pad"`` (stride-2 subsampling and zero channels, option A, the
0.27M-parameter network of He et al.'s Table 6: 269,722 parameters).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: str = "conv") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = 0
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "conv":
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(c_out))
            elif shortcut == "pad":
                self.pad, self.stride = c_out - c_in, stride
            else:
                raise ValueError(f"ResNet shortcut {shortcut!r}: use 'conv' (option B) or 'pad' (option A)")

    def _skip(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = x[:, :, ::self.stride, ::self.stride]
            return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._skip(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 3x32x32 inputs."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16, shortcut: str = "conv") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1, shortcut=shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():  # He init for convs (fan_out, as in the ADAHESSIAN code), BN = identity
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def resnet20(num_classes: int = 10, shortcut: str = "conv") -> CifarResNet:
    return CifarResNet(20, num_classes=num_classes, shortcut=shortcut)
