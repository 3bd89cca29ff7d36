"""Learning problems for the optimizer experiments: digits classification and 2-D flow matching.

* ``digits_mlp`` / ``digits_cnn``: scikit-learn digits (8x8, 1,797 images), a fixed
  60/20/20 train/val/test split (split seed 0, stratified); minibatch cross-entropy.
  Metrics: ``val_loss``, ``val_accuracy`` along the run; ``test_loss``, ``test_accuracy`` at the end.
* ``fm_moons``: flow matching on 2-D moons with the linear path
  x_t = (1 - t) x0 + t x1, x0 ~ N(0, I), x1 ~ data, loss E|v(x_t, t) - (x1 - x0)|^2.
  Quality: sliced Wasserstein-2 between 1000 Euler-20-step samples and 1000 fresh moons.
"""
from __future__ import annotations

import functools
from typing import Any

from flowrepro.metrics.sliced import sliced_wasserstein
from flowrepro.optim.problems import Problem
from flowrepro.registry import PROBLEMS


@functools.lru_cache(maxsize=1)
def digits_splits() -> dict[str, tuple[Any, Any]]:
    """Deterministic stratified 60/20/20 split of sklearn digits, pixels scaled to [0, 1]."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, y = data.data / 16.0, data.target
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0,
                                                    stratify=y_rest)
    as_t = lambda a, b: (torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long))
    return {"train": as_t(x_train, y_train), "val": as_t(x_val, y_val), "test": as_t(x_test, y_test)}


def _digits_model(arch: str, hidden: int) -> Any:
    import torch.nn as nn

    if arch == "mlp":
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    if arch == "cnn":  # 8x8 -> 8 maps 8x8 -> 16 maps 4x4 -> 10 logits
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(16 * 4 * 4, 10))
    if arch == "linear":
        return nn.Linear(64, 10)
    raise ValueError(f"unknown digits architecture {arch!r}")


def digits_problem(seed: int, arch: str = "mlp", batch_size: int = 64, hidden: int = 64) -> Problem:
    """Cross-entropy on digits; init and minibatch order both depend on ``seed`` only."""
    import torch
    import torch.nn.functional as F

    splits = digits_splits()
    torch.manual_seed(seed)
    model = _digits_model(arch, hidden)
    gen = torch.Generator().manual_seed(10_000 + seed)
    x_train, y_train = splits["train"]
    n = len(y_train)
    order = {"perm": torch.randperm(n, generator=gen), "pos": 0}

    def batch() -> tuple[Any, Any]:
        if order["pos"] + batch_size > n:  # new epoch: reshuffle, drop the ragged tail
            order["perm"], order["pos"] = torch.randperm(n, generator=gen), 0
        idx = order["perm"][order["pos"]:order["pos"] + batch_size]
        order["pos"] += batch_size
        return x_train[idx], y_train[idx]

    def loss(t: int) -> Any:
        xb, yb = batch()
        return F.cross_entropy(model(xb), yb)

    def score(split: str) -> dict[str, float]:
        x, y = splits[split]
        with torch.no_grad():
            logits = model(x)
            return {f"{split}_loss": F.cross_entropy(logits, y).item(),
                    f"{split}_accuracy": (logits.argmax(1) == y).float().mean().item()}

    def summary() -> dict[str, float]:
        return {**score("val"), **score("test"), **{"train_loss": score("train")["train_loss"]}}

    return Problem(f"digits_{arch}", list(model.parameters()), loss, lambda: score("val"), summary,
                   select_metric="val_accuracy", select_mode="max",
                   info={"initial_train_loss": score("train")["train_loss"]})


PROBLEMS.register("digits_mlp")(lambda seed, **kw: digits_problem(seed, arch="mlp", **kw))
PROBLEMS.register("digits_cnn")(lambda seed, **kw: digits_problem(seed, arch="cnn", **kw))
PROBLEMS.register("digits_linear")(lambda seed, **kw: digits_problem(seed, arch="linear", **kw))


def moons(n: int, seed: int, noise: float = 0.05) -> Any:
    import torch
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=noise, random_state=seed)
    return torch.tensor(x, dtype=torch.float32)


def fm_moons_problem(seed: int, batch_size: int = 256, hidden: int = 64, n_eval: int = 1000,
                     euler_steps: int = 20) -> Problem:
    """Flow matching on moons; ``sliced_w`` of Euler samples vs fresh data is the quality."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                        nn.Linear(hidden, 2))
    gen = torch.Generator().manual_seed(20_000 + seed)
    pool = moons(20_000, seed=1_000 + seed)  # training data pool; evaluation data is disjoint
    fresh = moons(n_eval, seed=900_000 + seed)  # validation data (curves, lr selection)
    fresh_test = moons(n_eval, seed=950_000 + seed)  # test data (reported quality)
    z_eval = torch.randn(n_eval, 2, generator=torch.Generator().manual_seed(30_000 + seed))

    def loss(t: int) -> Any:
        x1 = pool[torch.randint(len(pool), (batch_size,), generator=gen)]
        x0 = torch.randn(batch_size, 2, generator=gen)
        tt = torch.rand(batch_size, 1, generator=gen)
        xt = (1 - tt) * x0 + tt * x1
        return ((net(torch.cat([xt, tt], 1)) - (x1 - x0)) ** 2).sum(1).mean()

    def sample() -> Any:
        x, h = z_eval.clone(), 1.0 / euler_steps
        with torch.no_grad():
            for k in range(euler_steps):
                t = torch.full((len(x), 1), k * h)
                x = x + h * net(torch.cat([x, t], 1))
        return x

    def evaluate() -> dict[str, float]:
        return {"val_sliced_w": sliced_wasserstein(sample(), fresh)}

    def summary() -> dict[str, float]:
        x = sample()
        return {"val_sliced_w": sliced_wasserstein(x, fresh, n_projections=512),
                "sliced_w": sliced_wasserstein(x, fresh_test, n_projections=512)}

    return Problem("fm_moons", list(net.parameters()), loss, evaluate, summary,
                   select_metric="val_sliced_w", select_mode="min")


PROBLEMS.register("fm_moons")(fm_moons_problem)
