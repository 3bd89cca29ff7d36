"""``node_spirals``: a neural-ODE classifier on 2-D two-class spirals, solved by our dopri5.

The toy setting of Pal et al.'s solver-heuristic regularisation (ICML 2021, 2023) at CPU size::

    z(0) = [x, 0_aug]  (x in R^2, zero-augmented to 2 + aug dims)
    dz/dt = MLP([z, t])        (tanh, ``width`` hidden units, 2 hidden layers), t in [0, 1]
    logits = W z(1) + b        (linear readout)
    loss = CE(logits, y) + weight * R     (R: a regulariser of :mod:`.node_regularisers`; weight 0: none)

Training integrates the minibatch with dopri5 (rtol, atol) and backpropagates through the solver.
Metrics: along the run (validation split) ``loss`` (val cross-entropy), ``val_accuracy`` and
``nfe`` (function evaluations of one no-grad dopri5 solve of the whole validation set, the
test-time cost); at the end also ``test_accuracy``, ``test_loss``, ``nfe`` (of the test-set solve),
``test_wall_s`` (seconds of that solve), ``train_nfe`` (mean NFE of the training forward solves,
regulariser's extra evaluations included), ``train_reg`` (mean R) and ``step_wall_s`` (mean seconds
of a training step: forward, backward and optimizer step).

The dataset column is ``node_spirals`` unregularised, else ``node_spirals_<regulariser>``, so
one experiment can compare regularisers under the same optimizer (or set ``label``).
"""
from __future__ import annotations

import math
import random
import time
from typing import Any

from flowrepro.optim.problems import Problem
from flowrepro.registry import PROBLEMS


def spirals(n: int, seed: int, turns: float = 1.5, noise: float = 0.05) -> tuple[Any, Any]:
    """Two interleaved Archimedean spirals: r = s, angle = 2 pi turns s + pi y, s ~ U(0.1, 1), plus noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    s = 0.1 + 0.9 * torch.rand(n, generator=gen)
    angle = 2 * math.pi * turns * s + math.pi * y
    x = torch.stack([s * torch.cos(angle), s * torch.sin(angle)], 1)
    return 2.0 * x + noise * torch.randn(n, 2, generator=gen), y  # radius 2: O(1) coordinates


def node_spirals_problem(seed: int, regulariser: str = "none", weight: float = 0.0, *, n_train: int = 1000,
                         n_val: int = 500, n_test: int = 1000, batch_size: int = 128, width: int = 32,
                         aug: int = 2, rtol: float = 1e-4, atol: float = 1e-4, turns: float = 1.5,
                         label: str | None = None) -> Problem:
    """One seeded NODE classifier; ``regulariser`` in none | global_error | global_stiffness |
    local_error_unbiased | local_error_biased, added with ``weight``."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from flowrepro.optim.dopri5 import SolverDiverged, dopri5
    from flowrepro.optim.node_regularisers import regularise

    from flowrepro.optim.node_regularisers import REGULARISERS

    if regulariser != "none" and regulariser not in REGULARISERS:  # fail at build, not at step 1
        raise KeyError(f"unknown regulariser {regulariser!r}; known: none, {', '.join(REGULARISERS)}")
    active = regulariser != "none" and weight != 0.0
    name = label or ("node_spirals" if not active else f"node_spirals_{regulariser}")

    splits = {"train": spirals(n_train, 7, turns), "val": spirals(n_val, 8, turns), "test": spirals(n_test, 9, turns)}
    torch.manual_seed(seed)
    dim = 2 + aug
    field = nn.Sequential(nn.Linear(dim + 1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, dim))
    readout = nn.Linear(dim, 2)
    gen = torch.Generator().manual_seed(10_000 + seed)
    rng = random.Random(20_000 + seed)  # t* of the local regularisers
    stats = {"nfe": 0.0, "reg": 0.0, "steps": 0, "wall": 0.0, "start": 0.0}

    def f(t: float, z: Any) -> Any:
        return field(torch.cat([z, torch.full_like(z[:, :1], t)], 1))

    def lift(x: Any) -> Any:
        return torch.cat([x, x.new_zeros(len(x), aug)], 1)

    def loss(t: int) -> Any:
        stats["start"] = time.perf_counter()
        idx = torch.randint(n_train, (batch_size,), generator=gen)
        x, y = splits["train"][0][idx], splits["train"][1][idx]
        try:
            sol = dopri5(f, lift(x), 0.0, 1.0, rtol=rtol, atol=atol)
        except SolverDiverged:  # NaN parameters: a NaN loss makes the runner record the run as diverged
            return sum(p.sum() for p in field.parameters()) * math.nan
        total = F.cross_entropy(readout(sol.y), y)
        extra = 0
        if active:
            reg, extra = regularise(regulariser, f, sol, 0.0, 1.0, rtol, atol, rng)
            total = total + weight * reg
            stats["reg"] += float(reg.detach()) if torch.is_tensor(reg) else float(reg)
        stats["nfe"] += sol.nfe + extra
        stats["steps"] += 1
        return total

    def after_step(t: int) -> None:
        stats["wall"] += time.perf_counter() - stats["start"]

    def score(split: str) -> dict[str, float]:
        x, y = splits[split]
        with torch.no_grad():
            start = time.perf_counter()
            try:
                sol = dopri5(f, lift(x), 0.0, 1.0, rtol=rtol, atol=atol)
            except SolverDiverged:  # NaN parameters: no metric exists
                return {"loss": math.nan, "accuracy": math.nan, "nfe": math.nan, "wall_s": math.nan}
            wall = time.perf_counter() - start
            logits = readout(sol.y)
        return {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).float().mean().item(),
                "nfe": float(sol.nfe), "wall_s": wall}

    def evaluate() -> dict[str, float]:
        val = score("val")
        return {"loss": val["loss"], "val_accuracy": val["accuracy"], "nfe": val["nfe"]}

    def summary() -> dict[str, float]:
        val, test = score("val"), score("test")
        steps = max(stats["steps"], 1)
        return {"loss": val["loss"], "val_accuracy": val["accuracy"], "test_loss": test["loss"],
                "test_accuracy": test["accuracy"], "nfe": test["nfe"], "test_wall_s": test["wall_s"],
                "train_nfe": stats["nfe"] / steps, "train_reg": stats["reg"] / steps,
                "step_wall_s": stats["wall"] / steps}

    return Problem(name, list(field.parameters()) + list(readout.parameters()), loss, evaluate, summary,
                   select_metric="val_accuracy", select_mode="max", after_step=after_step,
                   info={"regulariser": regulariser, "weight": weight})


PROBLEMS.register("node_spirals")(node_spirals_problem)
