"""The reference training loop: flow matching the way torchcfm's CIFAR-10 script trains.

As atong01/conditional-flow-matching's examples/images/cifar10/train_cifar10.py does (read, not
copied): each step takes a batch from host memory and copies it to the device (its DataLoader),
draws x0 ~ N(0, I) and t ~ U(0, 1), regresses v(x_t, t) on u_t = x1 - x0, clips the gradient's
global norm, steps a plain ``torch.optim.Adam`` in fp32 (torch's default implementation), steps a
``LambdaLR`` warm-up (lr min(k, warmup) / warmup at step k) and updates the EMA with a Python
loop over the state dict, ema <- ema * decay + w * (1 - decay) (two temporaries per tensor). It
reads the loss with ``.item()`` every step, a host synchronisation per step, as flowrepro's loop
did before (torchcfm's script shows no loss and so does not).

Kept equal to flowrepro's loop so that the two compare: the loss is the caller's (flowrepro's
``mse`` sums over pixels and averages over the batch where torchcfm's ``torch.mean`` averages
over both; Adam does not see that scale up to its eps, the clipping threshold does), the network
is flowrepro's UNet called as net(x, t), and the random draws come from explicit generators in
the order flowrepro's ``independent`` coupling and ``uniform`` time density make them (data
index, noise, time), so on a CPU both loops train on the same batches.
"""
from __future__ import annotations

from typing import Callable


def ema_state_dict_loop(model, ema_model, decay: float) -> None:
    """torchcfm's ``ema``: for every state-dict entry, ema <- ema * decay + w * (1 - decay)."""
    source, target = model.state_dict(), ema_model.state_dict()
    for key in source:
        target[key].data.copy_(target[key].data * decay + source[key].data * (1 - decay))


def reference_train(model, ema_model, data, path, loss_fn: Callable, steps: int, batch_size: int, lr: float,
                    seed: int, device: str = "cpu", ema_decay: float = 0.9999, warmup: int = 0,
                    grad_clip: float = 1.0, on_step: Callable[[int], None] | None = None) -> list[float]:
    """Train ``model`` (and ``ema_model``) for ``steps`` steps on ``data`` (a host tensor); return the losses."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(k, warmup) / warmup) if warmup else None
    host = torch.Generator().manual_seed(seed)
    on_device = host if torch.device(device).type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        index = torch.randint(0, data.shape[0], (batch_size,), generator=host)
        x1 = data[index].to(device)  # the DataLoader's batch, copied to the device each step
        x0 = torch.randn(x1.shape, generator=on_device, device=device)
        t = torch.rand(batch_size, generator=on_device, device=device)
        loss = loss_fn(model(path.sample(x0, x1, t), t), path.velocity(x0, x1, t))
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            ema_state_dict_loop(model, ema_model, ema_decay)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1)
    return losses
