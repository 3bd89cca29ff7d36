"""``cifar10_resnet20``: ResNet-20 on CIFAR-10, the ADAHESSIAN paper's image benchmark (paper scale).

Data: ``data/cifar10.npz`` as written by ``flowrepro acquire --dataset cifar10`` (train/test
images 3x32x32 in [-1, 1] with labels); nothing here ever downloads. The last ``val_size``
training images of a fixed permutation (seed 0) are the validation split that picks the lr;
the test set is only reported. Channels are standardised with the training split's mean/std.

Training follows the ADAHESSIAN code (github.com/amirgholami/adahessian, image_classification):
batch 256, random crop (4-pixel zero padding) and horizontal flip, lr x 0.1 after epochs 80 and
120 of 160, weight decay 5e-4. Here the weight decay is an L2 term of the loss for every
optimizer (the same objective for all; their code decouples it for AdamW and AdaHessian).

``synthetic=N`` replaces the file by N random CIFAR-shaped images whose class is a fixed
random template plus noise (learnable): the dry run and the tests build the problem with it.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from flowrepro.optim.problems import Problem
from flowrepro.registry import PROBLEMS


@functools.lru_cache(maxsize=1)
def _load(path: str) -> dict[str, Any]:
    from flowrepro import io

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no CIFAR-10 archive; run `flowrepro acquire --dataset cifar10 --out {path}` "
                                "first (paper scale only; the optimizer dry run builds this problem without it)")
    return io.load_npz(path)


def synthetic_cifar(n: int, seed: int = 0, classes: int = 10, noise: float = 0.5) -> dict[str, Any]:
    """N train and N//4 (at least 10) test images: class template + Gaussian noise, in the archive's layout."""
    import numpy as np

    rng = np.random.default_rng(seed)
    templates = rng.uniform(-1, 1, size=(classes, 3, 32, 32)).astype(np.float32)
    out = {}
    for split, size in (("train", n), ("test", max(n // 4, classes))):
        labels = rng.integers(0, classes, size=size)
        images = templates[labels] + noise * rng.standard_normal((size, 3, 32, 32)).astype(np.float32)
        out[split], out[f"{split}_labels"] = np.clip(images, -1, 1), labels.astype(np.int64)
    return out


def _augment(x: Any, gen: Any, pad: int = 4) -> Any:
    """Random crop of the zero-padded image and random horizontal flip, per example."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    crops = padded[torch.arange(n, device=x.device)[:, None, None, None],
                   torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, crops.flip(3), crops)


def cifar10_resnet20_problem(seed: int, data: str = "data/cifar10.npz", synthetic: int | None = None,
                             batch_size: int = 256, val_size: int = 5000, augment: bool = True,
                             weight_decay: float = 5e-4, lr_decay_epochs: tuple[int, ...] = (80, 120),
                             lr_decay: float = 0.1, shortcut: str = "conv", device: str = "cpu",
                             eval_batch_size: int = 1000) -> Problem:
    """ResNet-20 / CIFAR-10 cross-entropy (+ L2); init, minibatch order and augmentation depend on ``seed``."""
    import torch
    import torch.nn.functional as F

    from flowrepro.config import pick_device
    from flowrepro.optim.resnet import resnet20

    dev = torch.device(pick_device(device))
    arrays = synthetic_cifar(int(synthetic)) if synthetic else _load(str(data))
    as_t = lambda key: torch.as_tensor(arrays[key])  # noqa: E731
    x_all, y_all, x_test, y_test = as_t("train"), as_t("train_labels"), as_t("test"), as_t("test_labels")
    val_size = min(int(val_size), len(y_all) // 5)  # synthetic data: a fifth
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = perm[:len(y_all) - val_size], perm[len(y_all) - val_size:]
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True)
    norm = lambda x: ((x - mean) / std).to(dev)  # noqa: E731
    splits = {"train": (norm(x_train), y_train.to(dev)), "val": (norm(x_all[val_idx]), y_all[val_idx].to(dev)),
              "test": (norm(x_test), y_test.to(dev))}
    n = len(y_train)
    batch_size = min(int(batch_size), n)
    steps_per_epoch = n // batch_size  # the ragged tail of each epoch is dropped

    torch.manual_seed(seed)
    model = resnet20(shortcut=shortcut).to(dev)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(10_000 + seed)
    order = {"perm": torch.randperm(n, generator=gen), "pos": 0}

    def batch() -> tuple[Any, Any]:
        if order["pos"] + batch_size > n:
            order["perm"], order["pos"] = torch.randperm(n, generator=gen), 0
        idx = order["perm"][order["pos"]:order["pos"] + batch_size].to(dev)
        order["pos"] += batch_size
        xb, yb = splits["train"][0][idx], splits["train"][1][idx]
        return (_augment(xb, gen) if augment else xb), yb

    def loss(t: int) -> Any:
        model.train()
        xb, yb = batch()
        value = F.cross_entropy(model(xb), yb)
        if weight_decay:
            value = value + 0.5 * weight_decay * sum((p ** 2).sum() for p in params)
        return value

    def lr_factor(t: int) -> float:
        epoch = (t - 1) // steps_per_epoch  # 0-based epoch of step t
        return lr_decay ** sum(epoch >= e for e in lr_decay_epochs)

    def score(split: str) -> dict[str, float]:
        x, y = splits[split]
        model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(y), eval_batch_size):
                logits = model(x[i:i + eval_batch_size])
                total += F.cross_entropy(logits, y[i:i + eval_batch_size], reduction="sum").item()
                correct += (logits.argmax(1) == y[i:i + eval_batch_size]).sum().item()
        model.train()
        return {f"{split}_loss": total / len(y), f"{split}_accuracy": correct / len(y)}

    def summary() -> dict[str, float]:
        return {**score("val"), **score("test")}

    return Problem("cifar10_resnet20", params, loss, lambda: score("val"), summary,
                   select_metric="val_accuracy", select_mode="max", lr_factor=lr_factor,
                   info={"n_params": sum(p.numel() for p in params), "steps_per_epoch": steps_per_epoch,
                         "n_train": n, "device": str(dev), "synthetic": bool(synthetic),
                         "epochs_per_1000_steps": 1000 / steps_per_epoch if steps_per_epoch else math.inf})


PROBLEMS.register("cifar10_resnet20")(cifar10_resnet20_problem)
