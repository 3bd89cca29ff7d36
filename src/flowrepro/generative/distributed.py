"""Data-parallel training on N GPUs of one node: torchrun starts N copies of ``flowrepro train``.

The workflow launches ``python -m torch.distributed.run --standalone --nproc_per_node N -m flowrepro
train ...`` when a recipe asks for ``gpus: N > 1``; torchrun puts RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in each copy's environment. :func:`from_environment` joins the process
group (NCCL on CUDA, gloo on CPU) and pins rank r to GPU LOCAL_RANK; without torchrun it returns
None and training is the one-process loop.

**Batch and learning rate.** Every rank draws the *same* global batch of B = the recipe's
``batch_size`` (one generator seed, so the same data indices, noise, times and flips, and a
minibatch-OT plan over the whole batch as on one GPU) and keeps rows [r B/N, (r+1) B/N). Each
rank's loss is the mean of per-sample losses l_i over its B/N rows, and DDP averages the
gradients over the N ranks:

    (1/N) sum_r grad (N/B) sum_{i in rank r} l_i = grad (1/B) sum_i l_i,

the gradient of the one-process step on the same batch. So the batch, the learning rate, warm-up,
clipping (the global norm of the averaged gradient, the same on every rank) and EMA stay the
recipe's: N GPUs change how long a step takes, not the training (up to the order of float sums,
and dropout masks, which each rank draws for its own rows). No learning-rate scaling rule applies
because the global batch does not grow with N. Training at a larger global batch is a different
recipe: change ``batch_size`` (and ``lr`` with it: linearly for SGD, Goyal et al. 2017; by about
sqrt of the batch ratio for Adam) and say so in the experiment's ``deviation:``. B must be a
multiple of N. Drawing the global batch on every rank costs N copies of the noise and indices
(for CIFAR-10 at B = 128, 1.5 MB of noise): nothing beside the network.

**Files.** Only rank 0 writes (checkpoints, the model file); every rank reads a checkpoint to
resume (one node, one filesystem). Loss values, the NaN check and a termination signal are
agreed at the loop's sync points with one all-reduce, so every rank stops at the same step. That
step must come within the grace a time limit leaves: SLURM's KillWait (30 s by default) and
torchrun's 30 s between forwarding SIGTERM and SIGKILL; ``sync_every`` = 50 steps is about 8 s at
the step time estimated for the paper network (workflow/rules/train.smk).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job."""

    rank: int
    local_rank: int
    world_size: int
    device: str

    def shard(self, batch):
        """Rows [rank B/N, (rank + 1) B/N) of a global batch of B rows."""
        rows = batch.shape[0]
        if rows % self.world_size:
            raise ValueError(f"batch of {rows} cannot be split evenly over {self.world_size} processes "
                             f"(gpus: {self.world_size}); make batch_size a multiple of it")
        size = rows // self.world_size
        return batch[self.rank * size:(self.rank + 1) * size]

    def wrap(self, model):
        """``model`` under DistributedDataParallel: rank 0's weights broadcast, gradients averaged."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean_and_any(self, values, flag: bool):
        """(mean over ranks of ``values``, whether ``flag`` is set on any rank): one all-reduce."""
        import torch
        import torch.distributed as dist

        packed = torch.cat([values.float(), torch.tensor([float(flag)], device=values.device)])
        dist.all_reduce(packed)  # sum over ranks
        return packed[:-1] / self.world_size, bool(packed[-1].item() > 0)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device: str) -> Distributed | None:
    """Join torchrun's process group, or None when not started by torchrun (or with one process).

    ``device`` is the scale's choice (``cuda`` or ``cpu``); on CUDA rank r uses ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = device.startswith("cuda")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank}: LOCAL_RANK {local_rank} but {torch.cuda.device_count()} GPU(s) visible; "
                               f"ask the scheduler for as many GPUs as processes")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size, device=device)
