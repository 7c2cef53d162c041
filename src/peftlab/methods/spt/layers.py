"""SPT's two kinds of update, as ``torch.nn.utils.parametrize`` parametrizations of a frozen tensor W.

* :class:`SparseDelta` — unstructured tuning: W + scatter(values at fixed flat indices). Only the ``k``
  values are parameters (optimizer state ∝ k); the backward still materialises a dense gradient of W's
  size for the scatter (the official ``SparseGradLinearFunction`` masks a dense gradient too).
* :class:`LowRankDelta` — structured tuning: W + B A (official ``StructuredTuningModule('lora')``: A
  Kaiming-uniform, B zeros, no α/r scaling). A is drawn from a generator the caller seeds per tensor (official:
  the global stream; see :mod:`.method`). The official LoRA runs in parallel (x Aᵀ Bᵀ) with drop-path
  0.1 on the branch; here B A is added to W (same output without drop-path; one d_out×d_in product per
  forward).

Merging is ``parametrize.remove_parametrizations(..., leave_parametrized=True)``: W ← W + Δ exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SparseDelta(nn.Module):
    def __init__(self, shape: torch.Size, indices: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("spt_index", indices.to(device=device, dtype=torch.long))
        self.spt_values = nn.Parameter(torch.zeros(indices.numel(), dtype=dtype, device=device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        values = self.spt_values  # fp32 under the precision rule, W possibly bf16: W + Δ is formed in fp32
        delta = torch.zeros(w.numel(), dtype=values.dtype, device=w.device).index_add(0, self.spt_index, values)
        return w + delta.view(self.shape)


class LowRankDelta(nn.Module):
    def __init__(self, out_features: int, in_features: int, rank: int, dtype: torch.dtype,
                 device: torch.device, generator: torch.Generator) -> None:
        """A drawn on the CPU from ``generator`` then moved to ``device``: the same values on every device."""
        super().__init__()
        a = torch.empty(rank, in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.lora_B @ self.lora_A
