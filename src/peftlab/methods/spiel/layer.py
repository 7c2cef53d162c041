"""The sparse-delta linear layer of SpIEL (arXiv 2401.16405; official ``sft/layer.py`` ``Linear``).

y = x (W₀ + scatter(indices, values))ᵀ + b. ``spiel_indices`` (a buffer of k flat positions of W, unique)
and ``spiel_values`` (k trainable fp32 values, initialised at 0, as the official ``dtype=float32`` deltas)
are the whole update; W₀ and b stay frozen and never get a ``.grad``.

Departure: the official code has a CUDA kernel (``linear-sd``) that never materialises the dense delta. We
build it in each forward (``index_put`` of the values into a zero tensor of W's size) and multiply by
W₀ + ΔW, so autograd forms the dense gradient dL/dW transiently and gathers its k entries for ``values``.
That costs one weight-sized temporary per layer (no optimizer state, no stored ``.grad``): fine for the ≤ 1B
models this repository trains, not the paper's memory profile. The same dense gradient is what the growth
step reads (``grad_hook``), as the official backward hook does during accumulation windows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from peftlab.methods.delta_linear import DeltaLinear


class SparseDeltaLinear(DeltaLinear):
    """A frozen ``nn.Linear`` plus ``k`` trainable entries of ΔW at random initial positions."""

    def __init__(self, linear: nn.Linear, k: int, generator: torch.Generator) -> None:
        super().__init__(linear)
        numel = self.in_features * self.out_features
        if self.weight.is_meta:  # budget calculator: shapes only
            index = torch.empty(k, dtype=torch.long, device="meta")
        else:  # official: a random subset of the positions, sorted
            index = torch.randperm(numel, generator=generator)[:k].sort().values.to(self.weight.device)
        self.register_buffer("spiel_indices", index)
        self.spiel_values = nn.Parameter(torch.zeros(k, dtype=torch.float32, device=self.weight.device))
        self.grad_hook: Callable[[torch.Tensor], None] | None = None  # set during accumulation windows

    def dense_delta(self) -> torch.Tensor:
        """ΔW (out, in), differentiable in ``spiel_values``."""
        flat = self.spiel_values.new_zeros(self.out_features * self.in_features)
        return flat.index_put((self.spiel_indices,), self.spiel_values).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.dense_delta()
        if self.grad_hook is not None and delta.requires_grad:
            delta.register_hook(self.grad_hook)  # receives dL/dW (out, in): the growth criterion
        return F.linear(x, self.weight + delta.to(self.weight.dtype), self.bias)

    def delta_weight(self) -> torch.Tensor:
        return self.dense_delta().detach()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.spiel_values.numel()}"
