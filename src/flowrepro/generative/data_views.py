"""Views of training data that couplings index like a tensor: flipped images, pairs on disk.

A coupling reads ``data.shape``, ``data.device`` and ``data[index]`` (reflow: ``pairs[k, index]``),
so these views slot in without the couplings knowing. Each has its own random stream: turning
flips on leaves the coupling's own draws (and so every other run) unchanged.
"""
from __future__ import annotations

import numpy as np


class RandomHorizontalFlip:
    """``images[index]`` with each image mirrored left-right with probability 1/2 (the papers'
    CIFAR-10 augmentation: DDPM, score SDE, rectified flow, torchcfm)."""

    def __init__(self, images, seed: int) -> None:
        import torch

        self.images = images
        # on the images' device, so drawing the flips never waits for the host; apart from the coupling's stream
        self.generator = torch.Generator(device=images.device).manual_seed(7_000_000 + seed)

    @property
    def shape(self):
        return self.images.shape

    @property
    def device(self):
        return self.images.device

    @property
    def dtype(self):
        return self.images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        import torch

        batch = self.images[index]
        flip = torch.rand(batch.shape[0], generator=self.generator, device=batch.device) < 0.5
        return torch.where(flip.view(-1, *([1] * (batch.dim() - 1))), batch.flip(-1), batch)


class PairsOnDisk:
    """One seed's reflow pairs (2, n, ...) inside a memory-mapped ``.npy`` of shape (seeds, 2, n, ...):
    a batch is read from disk when drawn, so a million CIFAR-10 pairs need no memory."""

    def __init__(self, path: str, seed_index: int, device: str) -> None:
        self.array = np.load(path, mmap_mode="r")
        if self.array.ndim < 4 or self.array.shape[1] != 2:
            raise ValueError(f"{path}: reflow pairs must have shape (seeds, 2, n, ...), got {self.array.shape}")
        if not 0 <= seed_index < self.array.shape[0]:
            raise ValueError(f"{path}: holds pairs of {self.array.shape[0]} seed(s); seed index {seed_index} asked for")
        self.seed_index, self._device = seed_index, device

    @property
    def shape(self):
        return self.array.shape[1:]

    @property
    def device(self):
        import torch

        return torch.device(self._device)

    def __getitem__(self, key):
        import torch

        side, index = key
        rows = np.asarray(index.cpu() if hasattr(index, "cpu") else index)
        return torch.from_numpy(np.ascontiguousarray(self.array[self.seed_index, side][rows])).to(self._device)
