"""The flow-matching training loop: resumable, NaN-checked, deterministic on CPU.

Loss: E_{t, (x0, x1) ~ coupling} || v_theta(x_t, t) - u_t(x0, x1) ||^2 with x_t and u_t from
the probability path. Every ``checkpoint_every`` steps the model, optimizer and random-number
state are written atomically; a re-run with the same checkpoint path continues from there and
gives the same weights as an uninterrupted run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flowrepro import io


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    checkpoint_every: int = 500
    optimizer: str = "adamw"
    time_density: str = "uniform"
    loss: str = "mse"


def build_optimizer(name: str, params, lr: float):
    """Look the optimizer up in the registry; plain torch.optim names need no extra import."""
    import torch

    builtin = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name in builtin:
        return builtin[name](params, lr=lr)
    from flowrepro.optim import registry  # noqa: F401  (registers the rest)
    from flowrepro.registry import OPTIMIZERS

    return OPTIMIZERS.get(name).build(params, lr=lr)


def train_flow(model, coupling: Callable, path, config: TrainConfig, seed: int, run_name: str,
               checkpoint: str | Path, device="cpu", progress: bool = True) -> list[float]:
    """Train ``model`` in place; return the loss of every step (resumed steps included)."""
    import torch
    from tqdm import tqdm

    from flowrepro.generative import losses
    from flowrepro.registry import LOSSES, TIME_DENSITIES

    _ = losses  # registers mse and the time densities
    loss_fn, sample_time = LOSSES.get(config.loss), TIME_DENSITIES.get(config.time_density)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    history: list[float] = []
    start = 0
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, history = state["step"], state["history"]
        print(f"{run_name}: resumed from checkpoint {checkpoint} at step {start}")

    bar = tqdm(range(start, config.steps), desc=run_name, disable=not progress, mininterval=2.0,
               initial=start, total=config.steps)
    for step in bar:
        x0, x1 = coupling(config.batch_size, generator)
        t = sample_time(x1.shape[0], generator, device)
        xt = path.sample(x0, x1, t)
        loss = loss_fn(model(xt, t), path.velocity(x0, x1, t))
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"{run_name}: loss is {value} at step {step + 1}; stopping "
                                   f"(last checkpoint: {checkpoint if checkpoint.exists() else 'none'})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(value)
        done = step + 1
        if done % config.checkpoint_every == 0 and done < config.steps:
            io.save_torch(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "generator": generator.get_state(), "step": done, "history": history})
        if done % 100 == 0:
            bar.set_postfix(loss=f"{sum(history[-100:]) / 100:.4f}")
    return history
