"""The sparse-delta linear layer of SpIEL (arXiv 2401.16405; official ``sft/layer.py`` ``Linear``).

y = x (W₀ + scatter(indices, values))ᵀ + b. ``spiel_indices`` (a buffer of k flat positions of W, unique)
and ``spiel_values`` (k trainable fp32 values, initialised at 0, as the official ``dtype=float32`` deltas)
are the whole update; W₀ and b stay frozen and never get a ``.grad``.

Departure: the official code has a CUDA kernel (``linear-sd``) that never materialises the dense delta. Our
autograd function builds ΔW transiently: forward computes x (W₀ + ΔW)ᵀ + b and saves only x (as LoRA does);
backward rebuilds W₀ + ΔW for the input gradient and forms the dense dL/dW = gᵀx in fp32 once, gathering its k
entries for ``values`` (and handing it to ``grad_hook`` in accumulation windows, as the official backward hook
reads the dense weight gradient). So the cost is weight-sized temporaries per layer during forward/backward
(no stored ``.grad``, no optimizer state for W): fine for the ≤ 1B models this repository trains, not the
paper's memory profile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from peftlab.methods.delta_linear import DeltaLinear


def _scatter(values: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return values.new_zeros(shape.numel()).index_put_((indices,), values).view(shape)


class _SparseDeltaLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, values: torch.Tensor,
                indices: torch.Tensor, grad_hook: Callable[[torch.Tensor], None] | None) -> torch.Tensor:
        delta = _scatter(values.detach(), indices, weight.shape).to(weight.dtype)
        ctx.save_for_backward(x, weight, values, indices)
        ctx.grad_hook, ctx.has_bias = grad_hook, bias is not None
        return F.linear(x, weight + delta, bias)  # (..., out); W₀ + ΔW is not kept for backward

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, values, indices = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_bias = grad_values = None
        if ctx.needs_input_grad[1]:
            raise RuntimeError("SpIEL keeps the dense weight frozen; it must not require grad")
        if ctx.needs_input_grad[0]:
            merged = weight + _scatter(values.detach(), indices, weight.shape).to(weight.dtype)
            # under autocast g is half while W₀ may be fp32 (backward runs outside autocast): compute in g's dtype
            grad_x = (g @ merged.to(g.dtype)).view(*grad_out.shape[:-1], weight.shape[1])  # (..., in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        if ctx.needs_input_grad[3] or ctx.grad_hook is not None:
            dense = g.float().t() @ x.reshape(-1, x.shape[-1]).float()  # dL/dW (out, in), transient
            if ctx.grad_hook is not None:
                ctx.grad_hook(dense)
            grad_values = dense.view(-1)[indices].to(values.dtype) if ctx.needs_input_grad[3] else None
        return grad_x, None, grad_bias, grad_values, None, None


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
        """ΔW (out, in) from the current indices and values (no autograd graph)."""
        return _scatter(self.spiel_values.detach(), self.spiel_indices, self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SparseDeltaLinearFn.apply(x, self.weight, self.bias, self.spiel_values, self.spiel_indices,
                                          self.grad_hook)

    def delta_weight(self) -> torch.Tensor:
        return self.dense_delta()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.spiel_values.numel()}"
