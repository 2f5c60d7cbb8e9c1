"""Set pooling: the generalised pooling operator (GPO), and the positional encoding it weighs set positions with.

GPO maps a padded set of features ``x`` ``[B, N, D]`` with an optional validity mask ``[B, N]`` (bool, True =
valid element) to ``[B, D]``; padded elements never change the result, and valid elements may sit anywhere in a
row (the mask need not be a prefix). It is device-agnostic and safe under autocast.

* :class:`GPO` (Chen et al., "Learning the Best Pooling Strategy for Visual Semantic Embedding", VSE-infinity,
  CVPR 2021), used by KAMCL's hierarchical aggregator and text encoder: every channel's valid values are sorted in
  descending order and averaged with learned weights over the sorted positions, so it can learn anything between
  max pooling (all weight on position 0) and mean pooling (uniform weights), per set size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GPO", "positional_encoding"]


def positional_encoding(length: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Sinusoidal positional encodings ``[length, dim]`` (float32) of positions ``0..length-1`` (Vaswani et al.).

    Even channels hold ``sin(pos / 10000^(2i/dim))``, odd channels the matching ``cos``.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"the positional-encoding size must be even and >= 2, got {dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float32, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def _check_set(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The boolean mask ``[B, N]`` of ``x`` ``[B, N, D]`` (all True when ``mask`` is None)."""
    if x.dim() != 3:
        raise ValueError(f"expected a padded set of features [B, N, D], got shape {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must have shape [B, N] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    return mask.to(device=x.device, dtype=torch.bool)


def _no_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` (so the enclosed maths runs in the tensors' own dtype)."""
    return torch.autocast(device_type=device.type, enabled=False)


class GPO(nn.Module):
    """Generalised pooling operator: a learned weighted sum over each channel's values sorted in descending order.

    For a sample with ``n`` valid elements, position weights ``w_0..w_{n-1}`` are produced from the sinusoidal
    encodings of positions ``0..n-1`` by a bidirectional GRU (the two directions' outputs averaged), a linear layer
    to one score per position, and a softmax with temperature ``temperature`` over the ``n`` positions. Every
    channel's valid values are sorted in descending order and the output is ``sum_k w_k * sorted_k``. The weights
    depend only on ``n``, so the operator is invariant to the order of the set's elements.

    Padding: padded entries are filled with ``-inf`` before the sort, so they land after every valid value, and
    those sorted positions are then zeroed and get weight 0; a sample with no valid element pools to zeros. The
    weights are computed in float32 with autocast turned off (the GRU is evaluated once per distinct set size in
    the batch); the output has ``x``'s dtype.

    Args:
        d_pe: size of the positional encodings (even).
        d_hidden: GRU hidden size per direction.
        temperature: softmax temperature over the positions (0.1 in the paper).
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        if d_pe < 2 or d_pe % 2:
            raise ValueError(f"d_pe must be even and >= 2, got {d_pe}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.d_pe, self.d_hidden, self.temperature = int(d_pe), int(d_hidden), float(temperature)
        self.gru = nn.GRU(d_pe, d_hidden, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def weight_matrix(self, lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Position weights ``[B, max(lengths)]`` (float32) for sets of ``lengths`` valid elements.

        Row ``i`` holds the softmax weights of positions ``0..lengths[i]-1`` (summing to 1) and zeros after them;
        a length of 0 gives an all-zero row.
        """
        device = self.linear.weight.device
        lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).to(device)
        if lengths.numel() and int(lengths.min()) < 0:
            raise ValueError(f"set lengths must be >= 0, got {lengths.tolist()}")
        width = int(lengths.max()) if lengths.numel() else 0
        if width == 0:
            return torch.zeros(lengths.numel(), 0, dtype=torch.float32, device=device)
        sizes, inverse = torch.unique(lengths.clamp_min(1), return_inverse=True)  # one GRU run per distinct size
        n_max = int(sizes.max())
        valid = torch.arange(n_max, device=device) < sizes.unsqueeze(1)  # [U, n_max]
        dtype = self.linear.weight.dtype
        with _no_autocast(device):
            pe = positional_encoding(n_max, self.d_pe, device).to(dtype).expand(len(sizes), -1, -1)
            packed = nn.utils.rnn.pack_padded_sequence(pe, sizes.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.gru(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=n_max)
            out = (out[..., : self.d_hidden] + out[..., self.d_hidden :]) / 2
            scores = self.linear(out).squeeze(-1).float() / self.temperature  # [U, n_max]
            weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
        weights = weights[inverse][:, :width]
        return weights.masked_fill((lengths == 0).unsqueeze(1), 0.0)

    def weights(self, lengths: torch.Tensor | Sequence[int]) -> list[torch.Tensor]:
        """The position weights of each set as a list of ``[lengths[i]]`` float32 tensors (for references/plots)."""
        matrix = self.weight_matrix(lengths)
        return [matrix[i, :n] for i, n in enumerate(torch.as_tensor(lengths).reshape(-1).tolist())]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool ``x`` ``[B, N, D]`` over its valid elements (``mask`` ``[B, N]``, True = valid) to ``[B, D]``."""
        mask = _check_set(x, mask)
        lengths = mask.sum(1)
        weights = self.weight_matrix(lengths).to(x.device)  # [B, L], L = max valid count
        width = weights.shape[1]
        if width == 0:
            return x.new_zeros(x.shape[0], x.shape[2])
        filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        ranked = filled.sort(dim=1, descending=True).values[:, :width]  # padding sorted to the end, then cut
        valid = (torch.arange(width, device=x.device) < lengths.unsqueeze(1)).unsqueeze(-1)
        ranked = torch.where(valid, ranked, torch.zeros((), dtype=ranked.dtype, device=x.device))
        with _no_autocast(x.device):
            pooled = (ranked.float() * weights.unsqueeze(-1)).sum(1)
        return pooled.to(x.dtype)
