"""The flow-matching training loop: resumable, NaN-checked, deterministic on CPU, one or N GPUs.

Loss: an objective of :mod:`.objectives`, by default E_{t, (x0, x1) ~ coupling}
|| v_theta(x_t, t) - u_t(x0, x1) ||^2 with x_t and u_t from the probability path. An exponential
moving average of the weights, ema <- decay ema + (1 - decay) theta, is kept when ``ema_decay > 0``
(and always for objectives that train against an EMA target). Every ``checkpoint_every`` steps
the model, EMA, optimizer and random-number state are written atomically; a re-run with the same
checkpoint path continues from there and gives the same weights as an uninterrupted run. SIGTERM
or SIGUSR1 (what SLURM sends before a time limit or a preemption) writes a checkpoint at the end
of the current step and raises :class:`Interrupted`, so the job's retry resumes there.

The recipe (optimizer, betas, eps, weight decay, warm-up, clipping) follows the papers': the learning
rate rises linearly from 0 over ``warmup`` steps (DDPM, score SDE, torchcfm: step k from 0 at lr k / warmup), and the gradient's
global norm is clipped to ``grad_clip`` before each step.

What the hardware offers, without changing the training:

- CUDA: bf16 autocast (where the GPU has bf16; fp32 otherwise), the network and image batches in
  channels_last, cuDNN autotuning, Adam/AdamW as one fused kernel; elsewhere Adam's ``foreach``
  form (bit-identical to torch's default loop on CPU). The EMA is one ``_foreach_lerp_``.
- No host synchronisation in a step: each step's loss stays on the device and the host reads the
  pending ones every ``sync_every`` steps (and before any checkpoint). The NaN check runs on them
  then and names the first step whose loss was not finite; the steps after it are lost work only,
  since the weights are never written past a non-finite loss.
- ``compile`` wraps the network in ``torch.compile``.
- ``distributed`` (:mod:`.distributed`): every rank draws the same global batch and trains on its
  slice under DistributedDataParallel; only rank 0 writes checkpoints.

Dropout draws from the process-wide RNG; where the network has dropout it is reseeded each step
from (seed, rank, step), so a resumed run draws the masks an uninterrupted one would and ranks draw
different ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from flowrepro import io

if TYPE_CHECKING:
    from flowrepro.generative.distributed import Distributed


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
    sync_every: int = 50                # read the losses to the host (NaN check, progress) every this many steps
    channels_last: bool | None = None   # None: on CUDA for image batches
    fused: bool | None = None           # Adam/AdamW as one fused kernel; None: on CUDA (foreach elsewhere)


def ema_tensors(ema_model, model) -> tuple[list, list, list, list]:
    """The (EMA, model) parameter and buffer lists :func:`update_ema` reads, gathered once per training
    rather than by walking a diffusers UNet's ~270 modules twice a step (about 1% of a tiny digits step)."""
    return list(ema_model.parameters()), list(model.parameters()), list(ema_model.buffers()), list(model.buffers())


def update_ema(tensors: tuple[list, list, list, list], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights, i.e. ema.lerp_(weights, 1 - decay), over all
    parameters in one ``_foreach_lerp_`` (bit-identical to a per-tensor lerp_); buffers copied.
    ``tensors``: :func:`ema_tensors` of the two networks."""
    import torch

    ema_parameters, parameters, ema_buffers, buffers = tensors
    with torch.no_grad():
        torch._foreach_lerp_(ema_parameters, parameters, 1 - decay)
        if buffers:
            torch._foreach_copy_(ema_buffers, buffers)


def build_optimizer(name: str, params, lr: float, betas=None, eps=None, weight_decay=None, device="cpu",
                    fused: bool | None = None):
    """Look the optimizer up in the registry; plain torch.optim names need no extra import.

    ``betas``, ``eps`` and ``weight_decay`` are passed only when given, so the optimizer's own
    defaults stay in force otherwise (torch's AdamW: weight decay 0.01). Adam and AdamW run fused
    (``fused``; default on CUDA) or in ``foreach`` form: the same update in fewer kernels."""
    import torch

    options = {k: v for k, v in (("betas", tuple(betas) if betas else None), ("eps", eps), ("weight_decay", weight_decay))
               if v is not None}
    builtin = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name in ("adam", "adamw"):
        fused = torch.device(device).type == "cuda" if fused is None else fused
        options["fused" if fused else "foreach"] = True
    if name in builtin:
        return builtin[name](params, lr=lr, **options)
    from flowrepro.optim import registry  # noqa: F401  (registers the optimizers)
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


def dropout_seed(seed: int, rank: int, step: int) -> int:
    """The process-wide RNG's seed for one step of one rank (dropout masks), distinct for each triple."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + step) % 2**63


def _has_dropout(model) -> bool:
    from torch import nn

    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
    return any(isinstance(m, kinds) and m.p > 0 for m in model.modules())


def _match_layout(optimizer) -> None:
    """Give loaded optimizer state its parameter's memory layout (channels_last): a checkpoint
    stores contiguous tensors, and fused/foreach kernels want matching strides."""
    import torch

    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def train_flow(model, coupling: Callable, path, config: TrainConfig, seed: int, run_name: str,
               checkpoint: str | Path, device="cpu", progress: bool = True, objective: Callable | None = None,
               ema_model=None, distributed: Distributed | None = None,
               on_sync: Callable[[int, list[float]], None] | None = None) -> list[float]:
    """Train ``model`` in place (and ``ema_model``, if given); return every step's loss.

    ``coupling(batch_size, generator)`` gives a batch (x0, x1) of ``config.batch_size`` (under
    ``distributed``, the global batch; each rank keeps its rows), or (x0, x1, labels) for a
    class-conditional ``model`` (:mod:`flowrepro.generative.conditioning`). ``on_sync(step, history)`` is
    called at each sync point, after the losses up to ``step`` were read (the device is idle then).
    """
    import torch
    from tqdm import tqdm

    from flowrepro import pieces
    from flowrepro.generative import losses
    from flowrepro.generative.conditioning import labelled
    from flowrepro.generative.objectives import regression

    _ = losses  # registers mse and the time densities
    loss_fn, sample_time = pieces.build("loss", config.loss), pieces.build("time_density", config.time_density)
    objective = objective or regression({}, path, loss_fn, None)
    cuda = torch.device(device).type == "cuda"
    bf16 = cuda and config.bf16 and torch.cuda.is_bf16_supported()
    if cuda and config.bf16 and not bf16:
        print(f"{run_name}: this GPU has no bf16; training in fp32")
    channels_last = cuda if config.channels_last is None else config.channels_last
    layout = torch.channels_last if channels_last else torch.contiguous_format
    nets = [net for net in (model, ema_model) if net is not None and channels_last]
    for net in nets:
        net.to(memory_format=layout)  # in place, 4-D weights only: cuDNN's tensor-core kernels read NHWC
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: time the conv algorithms once, keep the fastest
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, config.betas, config.eps,
                                config.weight_decay, device, config.fused)
    rank = distributed.rank if distributed else 0
    writer = rank == 0  # only rank 0 writes files; every rank reads a checkpoint
    generator = torch.Generator(device=device).manual_seed(seed)  # the same on every rank: one global batch
    history: list[float] = []
    start = 0
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        state = io.load_tree(checkpoint, "checkpoint")  # safetensors + JSON: refuses a pickle; on CPU, moved by load_state_dict
        model.load_state_dict(state["model"])
        if ema_model is not None:
            ema_model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        _match_layout(optimizer)
        generator.set_state(state["generator"])
        start, history = state["step"], state["history"]
        if writer:
            print(f"{run_name}: resumed from checkpoint {checkpoint} at step {start}")
    network = distributed.wrap(model) if distributed else model
    network = torch.compile(network) if config.compile else network
    target = (torch.compile(ema_model) if config.compile else ema_model) if ema_model is not None else None
    reseed = _has_dropout(model)
    averaged = ema_tensors(ema_model, model) if ema_model is not None else None  # after every .to(): same tensors
    pending: list = []  # this sync interval's losses, still on the device

    def save_checkpoint(done: int) -> None:
        if writer:
            io.save_tree(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "generator": generator.get_state(), "step": done, "history": history,
                                      "ema": ema_model.state_dict() if ema_model is not None else None}, "checkpoint")

    def read_losses(done: int, stopping: bool) -> bool:
        """Move the pending losses to ``history`` (one host sync); under ``distributed`` average them
        over ranks and agree on ``stopping``. Raises :class:`TrainingDiverged` at the first bad one."""
        values = torch.stack(pending).float() if pending else torch.zeros(0, device=device)
        pending.clear()
        if distributed:
            values, stopping = distributed.mean_and_any(values, stopping)
        numbers = values.tolist()
        for offset, value in enumerate(numbers):
            if not math.isfinite(value):
                raise TrainingDiverged(f"{run_name}: loss is {value} at step {done - len(numbers) + offset + 1}; "
                                       f"stopping (last checkpoint: {checkpoint if checkpoint.exists() else 'none'})")
        history.extend(numbers)
        return stopping

    bar = tqdm(range(start, config.steps), desc=run_name, disable=not (progress and writer), mininterval=2.0,
               initial=start, total=config.steps)
    with _StopSignals() as stop:
        for step in bar:
            if reseed:
                torch.manual_seed(dropout_seed(seed, rank, step))
            x0, x1, *labels = coupling(config.batch_size, generator)  # a class-conditional model's coupling adds labels
            labels = labels[0] if labels else None
            t = sample_time(x1.shape[0], generator, device)
            if distributed:
                x0, x1, t = distributed.shard(x0), distributed.shard(x1), distributed.shard(t)
                labels = distributed.shard(labels) if labels is not None else None
            if channels_last and x1.dim() == 4:
                x0, x1 = x0.contiguous(memory_format=layout), x1.contiguous(memory_format=layout)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16), labelled(model, labels):
                loss = objective(network, x0, x1, t, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if config.warmup > 0:  # step k (from 0) at lr * min(k / warmup, 1), as score_sde's optimization_manager
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * min(step / config.warmup, 1.0)
            optimizer.step()
            if averaged is not None:
                update_ema(averaged, config.ema_decay)
            pending.append(loss.detach())
            done = step + 1
            # one process stops at the step the signal came in; ranks agree on it at the next sync point
            signalled = stop.received is not None and distributed is None
            if not (signalled or done % config.sync_every == 0 or done % config.checkpoint_every == 0
                    or done == config.steps):
                continue
            if read_losses(done, stop.received is not None) and done < config.steps:
                save_checkpoint(done)
                if distributed:
                    distributed.barrier()  # no rank exits before rank 0's checkpoint is complete
                raise Interrupted(f"{run_name}: {stop.received or 'a stop signal to another rank'} at step {done}; "
                                  f"checkpoint {checkpoint} written, a rerun resumes from it")
            if done % config.checkpoint_every == 0 and done < config.steps:
                save_checkpoint(done)
            if on_sync is not None:
                on_sync(done, history)
            bar.set_postfix(loss=f"{sum(history[-100:]) / len(history[-100:]):.4f}", refresh=False)
    for net in nets:
        net.to(memory_format=torch.contiguous_format)  # the caller gets the layout it passed
    return history
