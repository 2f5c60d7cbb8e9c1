"""Data-parallel training with ``torch.distributed``: process context, samplers and gathering.

Launch any ``rswb train`` command with ``torchrun --nproc-per-node N`` (one process per GPU; ``--nnodes`` and a
rendezvous endpoint for several machines). Each process trains on its share of every global batch, DDP averages the
gradients, evaluation outputs are gathered from all processes before the metrics are computed, and only rank 0 writes
the run folder. On CPU the ``gloo`` backend is used, so the same code is tested without GPUs.

Equivalence with one process: process ``r`` of ``W`` takes the ``r``-th, ``(r+W)``-th, ... items of each global
batch, so the union of the local batches is exactly the single-process batch; with a loss that is a mean over
samples and equal local batch sizes, the averaged gradient is the single-process gradient (up to float summation
order). Losses that look across the batch (in-batch negatives, batch statistics) see only the local batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "EpochBatchSampler", "gather_outputs", "init_distributed", "shard_indices"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, and its ``local_rank`` on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for all processes (a no-op for one process)."""
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _comm_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without those variables (a plain ``python`` or notebook run) this returns a one-process context and does
    nothing. The backend is NCCL when CUDA is available, else gloo; each process pins its own GPU ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return current_context()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return current_context()


def current_context() -> DistContext:
    """The context of an already initialised process group (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled global batches, each split across processes; the order depends only on ``(seed, epoch)``.

    Deriving the permutation from ``(seed, epoch)`` instead of a running generator makes resuming at an epoch
    boundary reproduce the uninterrupted order exactly, on any number of processes.

    Args:
        n: dataset length.
        batch_size: global batch size (a multiple of ``world_size``).
        seed: shuffling seed.
        shuffle: shuffle each epoch (else the natural order).
        drop_last: drop an incomplete last global batch. With several processes an incomplete last batch is
            always cut to a multiple of ``world_size`` so that every process holds the same number of samples.
        rank, world_size: this process's share.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} processes")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch size {batch_size} must be a positive multiple of the "
                             f"{world_size} processes")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation :meth:`__iter__` yields."""
        self.epoch = epoch

    def _global_batches(self) -> list[torch.Tensor]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        batches = list(order.split(self.batch_size))
        if batches and len(batches[-1]) < self.batch_size:
            cut = len(batches[-1]) - len(batches[-1]) % self.world_size
            if self.drop_last or cut == 0:
                batches.pop()
            else:
                batches[-1] = batches[-1][:cut]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._global_batches():
            yield b[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        keep_rest = not self.drop_last and rest - rest % self.world_size > 0
        return full + int(keep_rest)


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Evaluation share of one process: items ``rank, rank + W, ...`` (no padding, no duplicates)."""
    return list(range(rank, n, world_size))


def gather_outputs(outputs: dict[str, Any], ctx: DistContext, n: int) -> dict[str, Any]:
    """Reassemble per-process evaluation outputs (sharded by :func:`shard_indices`) in dataset order.

    Args:
        outputs: this process's outputs, tensors with the item dimension first (or lists), in shard order.
        ctx: the process context.
        n: total number of items.

    Returns:
        The outputs of all ``n`` items, in dataset order, on every process.
    """
    if not ctx.enabled:
        return outputs
    local = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in outputs.items()}
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, local)
    order = torch.cat([torch.tensor(shard_indices(n, r, ctx.world_size), dtype=torch.long)
                       for r in range(ctx.world_size)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    merged: dict[str, Any] = {}
    for key in local:
        values = [p[key] for p in parts]
        if isinstance(values[0], torch.Tensor):
            merged[key] = torch.cat(values)[inverse]
        else:
            flat = [x for v in values for x in v]
            merged[key] = [flat[i] for i in inverse.tolist()]
    return merged
