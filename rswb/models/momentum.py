"""Momentum (EMA) key encoders and feature queues, as used by KAMCL's momentum contrast (docs/methods.md, KAMCL).

A :class:`MomentumEncoder` keeps a frozen copy of an encoder whose parameters follow the online encoder by an
exponential moving average, ``key = m * key + (1 - m) * online``, for **every** parameter (the public code of some
methods misses the ones registered late, e.g. projection heads); floating buffers such as batch-norm statistics are
copied. A :class:`FeatureQueue` holds the most recent key embeddings (and the ids of their items, so that an item
is never its own negative) as a ring buffer of configurable size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["FeatureQueue", "MomentumEncoder"]


class MomentumEncoder(nn.Module):
    """An EMA copy of ``online`` that never receives gradients.

    Args:
        online: the encoder being trained (not modified).
        momentum: ``m`` of the update (MoCo / KAMCL: 0.995-0.999).
    """

    def __init__(self, online: nn.Module, momentum: float = 0.995):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.key = copy.deepcopy(online)
        self.key.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """One EMA step towards ``online``, whose parameters must match the copy's names and shapes.

        Raises:
            KeyError: ``online`` has a parameter the copy lacks, or the reverse (an encoder changed after copying).
        """
        own = dict(self.key.named_parameters())
        theirs = dict(online.named_parameters())
        if own.keys() != theirs.keys():
            missing, extra = sorted(theirs.keys() - own.keys()), sorted(own.keys() - theirs.keys())
            raise KeyError(f"momentum encoder and online encoder differ: only online {missing}, only key {extra}")
        for name, p in own.items():
            p.mul_(self.momentum).add_(theirs[name].detach(), alpha=1.0 - self.momentum)
        online_buffers = dict(online.named_buffers())
        for name, b in self.key.named_buffers():
            src = online_buffers.get(name)
            if src is not None:
                b.copy_(src)

    def forward(self, *args, **kwargs):
        """The key encoder's output, without gradients."""
        with torch.no_grad():
            return self.key(*args, **kwargs)


class FeatureQueue(nn.Module):
    """A ring buffer of the last ``size`` key embeddings and their item ids (kept in the state dict).

    Args:
        size: queue length.
        dim: embedding size.
        id_columns: ids per entry (1: ``ids`` is ``[size]``; G > 1: ``[size, G]``, e.g. image and text group).
    """

    def __init__(self, size: int, dim: int, id_columns: int = 1):
        super().__init__()
        if size < 1 or dim < 1 or id_columns < 1:
            raise ValueError(f"size, dim and id_columns must be positive, got {size}, {dim}, {id_columns}")
        self.register_buffer("features", torch.zeros(size, dim))
        shape = (size,) if id_columns == 1 else (size, id_columns)
        self.register_buffer("ids", torch.full(shape, -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """Capacity of the queue."""
        return int(self.features.shape[0])

    @torch.no_grad()
    def push(self, features: torch.Tensor, ids: torch.Tensor) -> None:
        """Enqueue ``[B, dim]`` features with their ``[B]`` (or ``[B, G]``) ids, overwriting the oldest entries.

        Writing wraps around; a batch larger than the queue keeps only its last ``size`` rows.
        """
        if features.ndim != 2 or features.shape[1] != self.features.shape[1] \
                or ids.shape != features.shape[:1] + self.ids.shape[1:]:
            raise ValueError(f"expected [B, {self.features.shape[1]}] features and {['B', *self.ids.shape[1:]]} "
                             f"ids, got {tuple(features.shape)} and {tuple(ids.shape)}")
        features, ids = features[-self.size:], ids[-self.size:]
        n = features.shape[0]
        slots = (self.pointer + torch.arange(n, device=self.features.device)) % self.size
        self.features[slots] = features.detach().to(self.features)
        self.ids[slots] = ids.to(self.ids)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part of the queue: ``(features [n, dim], ids [n])`` (n = entries pushed so far, at most size)."""
        n = int(self.count)
        if n < self.size:
            return self.features[:n], self.ids[:n]
        return self.features, self.ids
