"""The flow-matching training loop: resumable, NaN-checked, deterministic on CPU.

Loss: an objective of :mod:`.objectives`, by default E_{t, (x0, x1) ~ coupling}
|| v_theta(x_t, t) - u_t(x0, x1) ||^2 with x_t and u_t from the probability path. An exponential
moving average of the weights is kept when ``ema_decay > 0`` (and always for objectives that
train against an EMA target). On CUDA the forward pass runs under bf16 autocast, image batches in
channels_last; ``compile`` wraps the network in ``torch.compile``. Every ``checkpoint_every`` steps the model, optimizer and random-number
state are written atomically; a re-run with the same checkpoint path continues from there and
gives the same weights as an uninterrupted run. SIGTERM or SIGUSR1 (what SLURM sends before a time
limit or a preemption) writes a checkpoint at the end of the current step and raises
:class:`Interrupted`, so the job's retry resumes there.

The recipe (optimizer, betas, eps, weight decay, warm-up, clipping) follows the papers': the learning
rate rises linearly from 0 over ``warmup`` steps (DDPM, score SDE, torchcfm: step k from 0 at lr k / warmup), and the gradient's
global norm is clipped to ``grad_clip`` before each step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flowrepro import io


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Interrupted(RuntimeError):
    """A termination signal arrived; a checkpoint was written and a rerun resumes from it."""


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    checkpoint_every: int = 500
    optimizer: str = "adamw"
    time_density: str | dict = "uniform"  # a name, or {name: ..., <option>: ...} (flowrepro.pieces)
    loss: str | dict = "mse"
    ema_decay: float = 0.0
    bf16: bool = True
    compile: bool = False
    betas: tuple[float, float] | None = None  # None: the optimizer's own defaults
    eps: float | None = None
    weight_decay: float | None = None
    warmup: int = 0
    grad_clip: float = 0.0


def update_ema(ema_model, model, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights (buffers copied)."""
    import torch

    with torch.no_grad():
        for ema_param, param in zip(ema_model.parameters(), model.parameters()):
            ema_param.lerp_(param, 1 - decay)
        for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


def build_optimizer(name: str, params, lr: float, betas=None, eps=None, weight_decay=None):
    """Look the optimizer up in the registry; plain torch.optim names need no extra import.

    ``betas``, ``eps`` and ``weight_decay`` are passed only when given, so the optimizer's own
    defaults stay in force otherwise (torch's AdamW: weight decay 0.01)."""
    import torch

    options = {k: v for k, v in (("betas", tuple(betas) if betas else None), ("eps", eps), ("weight_decay", weight_decay))
               if v is not None}
    builtin = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name in builtin:
        return builtin[name](params, lr=lr, **options)
    from flowrepro.optim import registry  # noqa: F401  (registers the rest)
    from flowrepro.registry import OPTIMIZERS

    return OPTIMIZERS.get(name).build(params, lr=lr, **options)


class _StopSignals:
    """Turns SIGTERM / SIGUSR1 into a flag the loop checks after each step (restored on exit)."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __enter__(self):
        import signal
        import threading

        self.received, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        import signal

        self.received = signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)


def train_flow(model, coupling: Callable, path, config: TrainConfig, seed: int, run_name: str,
               checkpoint: str | Path, device="cpu", progress: bool = True, objective: Callable | None = None,
               ema_model=None) -> list[float]:
    """Train ``model`` in place (and ``ema_model``, if given); return every step's loss."""
    import torch
    from tqdm import tqdm

    from flowrepro import pieces
    from flowrepro.generative import losses
    from flowrepro.generative.objectives import regression

    _ = losses  # registers mse and the time densities
    loss_fn, sample_time = pieces.build("loss", config.loss), pieces.build("time_density", config.time_density)
    objective = objective or regression(path, loss_fn)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, config.betas, config.eps,
                                config.weight_decay)
    cuda = torch.device(device).type == "cuda"
    network = torch.compile(model) if config.compile else model
    target = (torch.compile(ema_model) if config.compile else ema_model) if ema_model is not None else None
    generator = torch.Generator(device=device).manual_seed(seed)
    history: list[float] = []
    start = 0
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        state = io.load_tree(checkpoint, "checkpoint")  # safetensors + JSON: refuses a pickle; on CPU, moved by load_state_dict
        model.load_state_dict(state["model"])
        if ema_model is not None:
            ema_model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, history = state["step"], state["history"]
        print(f"{run_name}: resumed from checkpoint {checkpoint} at step {start}")

    def save_checkpoint(done: int) -> None:
        io.save_tree(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "generator": generator.get_state(), "step": done, "history": history,
                                  "ema": ema_model.state_dict() if ema_model is not None else None}, "checkpoint")

    bar = tqdm(range(start, config.steps), desc=run_name, disable=not progress, mininterval=2.0,
               initial=start, total=config.steps)
    with _StopSignals() as stop:
        for step in bar:
            x0, x1 = coupling(config.batch_size, generator)
            t = sample_time(x1.shape[0], generator, device)
            if cuda and x1.dim() == 4:
                x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and config.bf16):
                loss = objective(network, x0, x1, t, target)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(f"{run_name}: loss is {value} at step {step + 1}; stopping "
                                       f"(last checkpoint: {checkpoint if checkpoint.exists() else 'none'})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if config.warmup > 0:  # step k (from 0) at lr * min(k / warmup, 1), as score_sde's optimization_manager
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * min(step / config.warmup, 1.0)
            optimizer.step()
            if ema_model is not None:
                update_ema(ema_model, model, config.ema_decay)
            history.append(value)
            done = step + 1
            if stop.received and done < config.steps:
                save_checkpoint(done)
                raise Interrupted(f"{run_name}: {stop.received} at step {done}; checkpoint {checkpoint} written, "
                                  f"a rerun resumes from it")
            if done % config.checkpoint_every == 0 and done < config.steps:
                save_checkpoint(done)
            if done % 100 == 0:
                bar.set_postfix(loss=f"{sum(history[-100:]) / 100:.4f}")
    return history
