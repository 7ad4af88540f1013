"""Data-parallel training of one concept over several processes (one per GPU), with torch.distributed.

Every process holds both models and the same trainer, and all of them draw the same random numbers for
the WHOLE batch (the batch is `config.batch_size`, the recipe's). Each then keeps its own slice of every
per-sample draw (`Shard.take`) and computes on that slice only; before each optimiser step the gradients
are averaged over the processes (`average_gradients`). The losses are per-sample means, so the averaged
gradient is the one-process gradient of the whole batch, and every process takes the same step: a run
on N processes is the one-process run with the same batch, up to float rounding, wherever its random
draws are per-sample (the teacher step, the student sample, the teacher target, the losses). Two parts
differ: the echo keeps the most real samples of each process's slice rather than of the whole batch,
and the teacher-feature backbones draw their noise for their own slice.

Launch with `torchrun --nproc_per_node N -m echodistill_core train ...` (README, "Several GPUs"):
`start_from_environment` joins the group torchrun describes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` processes that share each batch."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Shard":
        """The process group's shard, or the whole batch when no group is running."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    def size(self, batch_size: int) -> int:
        """This process's part of a batch; the batch must split evenly."""
        if batch_size % self.world:
            raise ValueError(f"a batch of {batch_size} does not split over {self.world} processes; give a batch "
                             f"size that is a multiple of {self.world}")
        return batch_size // self.world

    def take(self, values):
        """This process's slice of a whole-batch draw (a tensor or a list, along its first axis)."""
        if not self.active:
            return values
        size = self.size(len(values))
        return values[self.rank * size : (self.rank + 1) * size]


def average(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` averaged over the processes (itself without a group)."""
    shard = Shard.current()
    if not shard.active:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor / shard.world


def average_gradients(parameters: list[torch.Tensor]) -> None:
    """Every gradient replaced by its mean over the processes, in one flat all-reduce. A parameter without a
    gradient keeps none (the optimiser skips it, as one process would): every process runs the same graph,
    so the same parameters have gradients everywhere."""
    shard = Shard.current()
    parameters = [p for p in parameters if p.grad is not None]
    if not shard.active or not parameters:
        return
    flat = torch.cat([p.grad.reshape(-1).float() for p in parameters])
    dist.all_reduce(flat)
    flat /= shard.world
    offset = 0
    for parameter in parameters:
        count = parameter.grad.numel()
        parameter.grad = flat[offset : offset + count].view_as(parameter.grad).to(parameter.grad.dtype)
        offset += count


def start_from_environment() -> str | None:
    """Join the process group that torchrun describes (WORLD_SIZE > 1): NCCL with one GPU per process
    (LOCAL_RANK), gloo on CPUs. Returns this process's device, or None when not launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return "cpu"


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
