"""classifier: train the feature network of ``fid_classifier`` for one image dataset.

``flowrepro classifier --data data/digits.npz --out results/classifiers/digits.pt`` trains the
small CNN of :mod:`flowrepro.models.classifier` on ``train``/``train_labels`` (deterministic for
a seed on a given machine and thread count), measures its accuracy on ``test``/``test_labels``
and writes two files, once per dataset, which every experiment then reuses:

- ``<out>`` (``digits.pt``, safetensors + JSON despite the name): ``arch``, ``state_dict``,
  ``test_accuracy`` and how it was trained;
- ``<out stem>.stats.npz`` (``digits.stats.npz``): the reference statistics of the test set's
  features, ``mu`` (d,), ``sigma`` (d, d), ``n``, ``test_accuracy`` and ``classifier_sha256``
  (the checkpoint it belongs to; ``fid_classifier`` refuses a mismatched pair).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from flowrepro import io

DEFAULT_STEPS = 600
BATCH_SIZE = 64
LEARNING_RATE = 2e-3


def stats_path(classifier_file: str | Path) -> Path:
    """``results/classifiers/digits.pt`` -> ``results/classifiers/digits.stats.npz``."""
    path = Path(classifier_file)
    return path.with_name(path.name.removesuffix(".pt") + ".stats.npz")


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int = 0, steps: int = DEFAULT_STEPS,
                     batch_size: int = BATCH_SIZE, lr: float = LEARNING_RATE, num_classes: int | None = None):
    """Fit the CNN with AdamW and a cosine learning-rate decay; returns the model in eval mode."""
    import torch

    from flowrepro.models.classifier import build_classifier

    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.dim() != 4:
        raise ValueError(f"classifier: images must be (n, channels, height, width), got shape {tuple(x.shape)}")
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    num_classes = int(num_classes if num_classes is not None else int(y.max()) + 1)
    torch.manual_seed(seed)
    model = build_classifier(in_channels=x.shape[1], image_size=tuple(x.shape[2:]), num_classes=num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    order, position = torch.randperm(len(x), generator=generator), 0
    for _ in range(steps):
        if position + batch_size > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        loss = loss_fn(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    model.requires_grad_(False)
    return model


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    import torch

    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(torch.as_tensor(images[start:start + batch_size], dtype=torch.float32))
            correct += int((logits.argmax(1).numpy() == labels[start:start + batch_size]).sum())
    return correct / len(images)


def run(data_file: str, out: str, seed: int = 0, steps: int | None = None) -> dict:
    """Train, evaluate and write the checkpoint and its reference statistics; returns a summary."""
    from flowrepro.metrics.fid import classifier_features, feature_statistics
    from flowrepro.models.classifier import save_classifier

    arrays = io.load_data(data_file)  # checked against data_file.sha256
    missing = {"train", "train_labels", "test", "test_labels"} - set(arrays)
    if missing:
        raise KeyError(f"{data_file}: an image dataset needs train/test images and labels; missing {sorted(missing)}")
    steps = DEFAULT_STEPS if steps is None else int(steps)
    num_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    start = time.perf_counter()
    model = train_classifier(arrays["train"], arrays["train_labels"], seed=seed, steps=steps, num_classes=num_classes)
    train_s = time.perf_counter() - start
    test_accuracy = accuracy(model, arrays["test"], arrays["test_labels"])
    save_classifier(out, model, test_accuracy=test_accuracy, seed=int(seed), steps=steps, batch_size=BATCH_SIZE,
                    lr=LEARNING_RATE, train_seconds=train_s, data=Path(data_file).name,
                    n_train=int(len(arrays["train"])), n_test=int(len(arrays["test"])))
    mu, sigma = feature_statistics(classifier_features(model, arrays["test"]))
    stats = stats_path(out)
    io.save_npz(stats, mu=mu, sigma=sigma, n=np.int64(len(arrays["test"])), test_accuracy=np.float64(test_accuracy),
                classifier_sha256=np.str_(io.sha256_file(out)))
    print(f"classifier: test accuracy {test_accuracy:.4f} on {len(arrays['test'])} test images of {data_file} "
          f"({steps} steps, {train_s:.1f} s) -> {out}, {stats}")
    return {"test_accuracy": test_accuracy, "train_seconds": train_s, "classifier": str(out), "stats": str(stats)}
