"""Inception FID from a LOCAL weights file, without torchvision or torch-fidelity.

The FID InceptionV3 network (the TensorFlow 2015-12-05 graph), the TF1 bilinear resize to
299x299, and :func:`fid_inception`; the distance itself is :func:`flowrepro.metrics.fid.fid_from_features`.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from flowrepro.metrics.fid import _as_float_images, _file_key, fid_from_features

#: Weights files known to fit :func:`build_fid_inception` (same state-dict keys, no download here).
INCEPTION_WEIGHTS = (
    "weights-inception-2015-12-05-6726825d.pth (torch-fidelity / torchmetrics default)",
    "pt_inception-2015-12-05-6726825d.pth (pytorch-fid)",
)


# ----------------------------------------------------------------------------------------------
# Inception FID without torchvision or torch-fidelity
# ----------------------------------------------------------------------------------------------
# The FID InceptionV3 below (the TensorFlow 2015-12-05 graph ported to PyTorch) follows
# torch-fidelity's feature_extractor_inceptionv3.py and pytorch-fid's inception.py, both under
# the Apache License 2.0 (https://github.com/toshas/torch-fidelity,
# https://github.com/mseitzer/pytorch-fid). Module names match theirs, so either project's
# weights file loads as is. It is written out here because torch-fidelity's package
# __init__ imports torchvision, which must not be installed beside this torch build.

def _tf1_resize_bilinear(x, size: int):
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)``: source = dest * in/out, no half-pixel
    offset (as torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``, method 'slow')."""
    import torch

    def grid(n_in: int):
        position = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        low = position.long()
        return low, (low + 1).clamp_max(n_in - 1), position - low.float()

    y_lo, y_hi, dy = grid(x.shape[2])
    x_lo, x_hi, dx = grid(x.shape[3])
    top, bottom = x[:, :, y_lo, :], x[:, :, y_hi, :]
    row0 = top[..., x_lo] + (top[..., x_hi] - top[..., x_lo]) * dx
    row1 = bottom[..., x_lo] + (bottom[..., x_hi] - bottom[..., x_lo]) * dx
    return row0 + (row1 - row0) * dy.view(1, 1, size, 1)


def build_fid_inception():
    """The FID InceptionV3 (random weights): uint8 (n, 3, H, W) -> 2048-d pool features.

    Load a weights file into it with :func:`load_fid_inception`.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BasicConv2d(nn.Module):
        def __init__(self, cin, cout, **kwargs):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def tf_avg_pool(x):  # TensorFlow's average pool leaves padded zeros out of the mean
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class InceptionA(nn.Module):
        def __init__(self, cin, pool_features):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
            self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
            self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

        def forward(self, x):
            return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                              self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                              self.branch_pool(tf_avg_pool(x))], 1)

    class InceptionB(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

        def forward(self, x):
            return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                              F.max_pool2d(x, kernel_size=3, stride=2)], 1)

    class InceptionC(nn.Module):
        def __init__(self, cin, c7):
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d7 = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                d7 = layer(d7)
            return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(tf_avg_pool(x))], 1)

    class InceptionD(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

        def forward(self, x):
            b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
            return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

    class InceptionE(nn.Module):
        def __init__(self, cin, max_pool: bool):
            super().__init__()
            self.max_pool = max_pool  # the FID graph's last block max-pools (a quirk of that graph)
            self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
            self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
            self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
            self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else tf_avg_pool(x)
            return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                              self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3), self.branch_pool(pooled)], 1)

    class FIDInceptionV3(nn.Module):
        INPUT_IMAGE_SIZE = 299
        num_features = 2048  # read by torchmetrics' FrechetInceptionDistance

        def __init__(self):
            super().__init__()
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
            self.Mixed_5b = InceptionA(192, pool_features=32)
            self.Mixed_5c = InceptionA(256, pool_features=64)
            self.Mixed_5d = InceptionA(288, pool_features=64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = InceptionC(768, c7=128)
            self.Mixed_6c = InceptionC(768, c7=160)
            self.Mixed_6d = InceptionC(768, c7=160)
            self.Mixed_6e = InceptionC(768, c7=192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = InceptionE(1280, max_pool=False)
            self.Mixed_7c = InceptionE(2048, max_pool=True)
            self.fc = nn.Linear(2048, 1008)  # unused for FID; present so the weights files load strictly

        def forward(self, x):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"FID Inception expects uint8 images (n, 3, H, W), got {x.dtype} {tuple(x.shape)}")
            x = _tf1_resize_bilinear(x.float(), self.INPUT_IMAGE_SIZE)
            x = (x - 128) / 128
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                          self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
                x = block(x)
            return F.adaptive_avg_pool2d(x, 1).flatten(1)

        def train(self, mode: bool = True):  # never leaves eval mode (BatchNorm uses the stored statistics)
            return super().train(False)

    return FIDInceptionV3().eval()


@functools.lru_cache(maxsize=2)
def _cached_inception(key: tuple[str, int, int], device: str, sha256: str | None):
    import hashlib
    import io

    import torch

    from flowrepro.data.weights import read_verified

    # the bytes checked are the bytes loaded: a file swapped after the check cannot slip through
    data = read_verified(key[0], sha256) if sha256 is not None else Path(key[0]).read_bytes()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{key[0]}: not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("AuxLogits.")}
    model = build_fid_inception()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{key[0]}: not FID InceptionV3 weights (expected one of: {'; '.join(INCEPTION_WEIGHTS)})"
                         f"\n{error}") from None
    return model.to(device).eval().requires_grad_(False), hashlib.sha256(data).hexdigest()


def load_fid_inception(weights_file: str | os.PathLike, device: str = "cpu", require_manifest: bool = False):
    """The FID InceptionV3 with weights from a local file, loaded once per process. Nothing is
    downloaded: pass torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` or pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``.

    A file acquired by ``flowrepro acquire --weights fid_inception`` is checked against the sha256
    its manifest records before it is loaded (:func:`flowrepro.data.weights.read_verified`);
    ``require_manifest`` (the workflow's stages) refuses a file that has no manifest.
    """
    return _load(weights_file, device, require_manifest)[0]


def inception_weights_sha256(weights_file: str | os.PathLike, require_manifest: bool = False) -> str:
    """sha256 of the weights :func:`load_fid_inception` loads from ``weights_file`` (checked as it does)."""
    return _load(weights_file, "cpu", require_manifest)[1]


def _load(weights_file: str | os.PathLike, device: str, require_manifest: bool):
    from flowrepro.data.weights import recorded_sha256

    try:
        key = _file_key(weights_file)
    except FileNotFoundError:
        raise FileNotFoundError(f"{weights_file}: no Inception weights file there; fid_inception downloads nothing "
                                f"(`flowrepro acquire --weights fid_inception`, or get one of: "
                                f"{'; '.join(INCEPTION_WEIGHTS)})") from None
    return _cached_inception(key, str(device), recorded_sha256(weights_file, required=require_manifest))


def _to_uint8_rgb(images, image_shape):
    """[-1, 1] float images (n, C, H, W) or (n, C*H*W) -> clipped uint8 (n, 3, H, W) (gray repeated)."""
    import torch

    array = _as_float_images(images, clip=True)
    if array.ndim == 2:
        if image_shape is None:
            raise ValueError("flattened images need image_shape=(C, H, W)")
        array = array.reshape(len(array), *image_shape)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"fid_inception: images must be (n, 1 or 3, H, W), got {array.shape}")
    uint8 = torch.as_tensor(np.rint((array + 1) * 127.5).astype(np.uint8))
    return uint8.expand(-1, 3, -1, -1).contiguous() if uint8.shape[1] == 1 else uint8


def inception_features(images, weights_file: str | os.PathLike, image_shape: tuple[int, int, int] | None = None,
                       batch_size: int = 50, device: str = "cpu", require_manifest: bool = False) -> np.ndarray:
    """2048-d FID-Inception pool features (n, 2048), float64, of images in [-1, 1].

    Images: (n, C, H, W) with C in {1, 3}, or flattened with ``image_shape=(C, H, W)``. They are
    clipped and quantised to uint8, gray repeated to RGB, resized to 299x299 with TensorFlow-1
    bilinear interpolation and scaled to [-1, 1], as in the original FID and torch-fidelity
    (torchmetrics does the same with ``antialias=False``). Compute a reference set's features
    once and pass them to :func:`fid_from_features` for every sample set. Converted batch by batch:
    no whole-set copy of the images is made.
    """
    import torch

    network = load_fid_inception(weights_file, device, require_manifest)
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = _to_uint8_rgb(images[start:start + batch_size], image_shape)
            parts.append(network(batch.to(device)).double().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 2048))


def fid_inception(samples, reference, weights_file: str | os.PathLike, image_shape: tuple[int, int, int] | None = None,
                  batch_size: int = 50, device: str = "cpu") -> float:
    """Inception FID of ``samples`` against ``reference`` images (both in [-1, 1], n >= 2 each).

    ``weights_file``: a LOCAL FID-Inception state dict (see :func:`load_fid_inception`); nothing
    is downloaded. Features as in :func:`inception_features` (``image_shape`` is taken from
    ``reference`` when that is 4-D); the distance is :func:`fid_from_features`, which equals
    torchmetrics' ``FrechetInceptionDistance`` on the same features (the network here can be
    passed to it as ``feature=``) but avoids its general 2048x2048 eigenproblem. FID is strongly
    biased below a few thousand images: compare only at equal n.
    """
    if image_shape is None and np.ndim(reference) == 4:
        image_shape = tuple(np.shape(reference)[1:])
    real = inception_features(reference, weights_file, image_shape, batch_size, device)
    fake = inception_features(samples, weights_file, image_shape, batch_size, device)
    return fid_from_features(fake, real)
