"""Data-parallel training with torch.distributed (launched by ``torchrun``): gloo or NCCL.

Each rank attacks and trains on its slice of every global batch; gradients are averaged with one
all-reduce per step. The model is not wrapped in DistributedDataParallel because the PGD attack
runs extra forward passes whose input-only backward passes DDP's reducer would not expect.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes checkpoints, logs and progress bars."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment; no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return DistContext(rank, world_size, local_rank)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (at the end of training)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Make every rank start from rank 0's weights."""
    if ctx.enabled:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_gradients(parameters: Sequence[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average parameter gradients over ranks with a single flattened all-reduce."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad))
        offset += count


def sum_over_ranks(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of a list of floats over all ranks."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.enabled:
        dist.barrier()


class GlobalBatchSampler(Sampler[int]):
    """This rank's share of each global batch of a seeded permutation.

    Global batch k is ``perm[k*B:(k+1)*B]``, exactly what one process would train on; rank r
    takes its r-th consecutive slice of B / world_size indices. With several ranks the last
    incomplete global batch is dropped so that every rank runs the same number of steps.
    """

    def __init__(self, size: int, global_batch: int, ctx: DistContext, seed: int,
                 epoch: int) -> None:
        if global_batch % ctx.world_size:
            raise ValueError(f"batch size {global_batch} must be divisible by the number of "
                             f"processes ({ctx.world_size})")
        self.size, self.global_batch, self.ctx = size, global_batch, ctx
        self.local_batch = global_batch // ctx.world_size
        self.generator = torch.Generator().manual_seed(seed * 100_003 + epoch)

    def __len__(self) -> int:
        return self.steps() * self.local_batch

    def steps(self) -> int:
        """Optimizer steps per epoch."""
        if self.ctx.enabled:
            return self.size // self.global_batch
        return math.ceil(self.size / self.global_batch)

    def __iter__(self) -> Iterator[int]:
        perm = torch.randperm(self.size, generator=self.generator).tolist()
        start = self.ctx.rank * self.local_batch
        for step in range(self.steps()):
            base = step * self.global_batch + start
            yield from perm[base : base + self.local_batch]
