"""Block-sparse linear layer of SMT with its own autograd (arXiv 2405.15525 §3.2; official ``SparseLinear``).

y = x W₀ᵀ + b + Σ_i  scatter_rows(r_i) ( x[..., cols(c_i)] Δ_iᵀ )

W₀ (and the bias) stay frozen and never get a ``.grad``; the only trainable tensor is ``smt_delta`` of
shape ``(k, b, b)``, the updates of the k selected blocks (block i at block-row r_i, block-column c_i).
Backward computes dΔ_i = g[..., rows(r_i)]ᵀ · x[..., cols(c_i)] summed over batch and tokens, exactly the
full-weight gradient restricted to the block, and the dense input gradient g (W₀ + Δ).

Departures from the official code, all to save time or memory, none changing the maths:
- the official layer copies the trainable block values into W on every forward (a Python loop); we keep
  the update Δ apart and add its (small) product, so no weight is copied. Training Δ from 0 with Adam and
  weight decay 0 (the paper's setting) follows the same trajectory as training the block values;
- the official layer saves the whole input for backward; we save only the input column-blocks that some
  selected block reads (the input itself when every column-block is read, to avoid a useless copy);
- any number of leading dims (2-D or 3-D inputs), bias supported, any module name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class _BlockSparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, delta: torch.Tensor,
                rows: torch.Tensor, cols: torch.Tensor, used_cols: torch.Tensor, col_slot: torch.Tensor
                ) -> torch.Tensor:
        b = delta.shape[-1]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        n = x2.shape[0]
        y = F.linear(x2, weight, bias)  # (N, out)
        if used_cols.numel() == x2.shape[1] // b:
            saved = x2.view(n, -1, b)  # every column-block is read: keep the input itself, no copy
            slots = cols
        else:
            saved = x2.view(n, -1, b).index_select(1, used_cols)  # (N, u, b): only the columns blocks read
            slots = col_slot
        xs = saved.index_select(1, slots)  # (N, k, b)
        contrib = torch.einsum("nkj,kij->nki", xs, delta.to(xs.dtype))  # (N, k, b) = x_cols Δᵀ per block
        y = y.view(n, -1, b).index_add_(1, rows, contrib).view(n, -1)
        ctx.save_for_backward(saved, slots, weight, delta, rows, cols)
        ctx.has_bias = bias is not None
        return y.view(*lead, y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved, slots, weight, delta, rows, cols = ctx.saved_tensors
        b = delta.shape[-1]
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        n = g.shape[0]
        g_blocks = g.view(n, -1, b).index_select(1, rows)  # (N, k, b): output rows of each block
        grad_x = grad_delta = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight.to(g.dtype)  # (N, in): dense part
            sparse = torch.einsum("nki,kij->nkj", g_blocks, delta.to(g.dtype))  # (N, k, b)
            grad_x = grad_x.view(n, -1, b).index_add_(1, cols, sparse).view(n, -1)
            grad_x = grad_x.view(*grad_out.shape[:-1], grad_x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        if ctx.needs_input_grad[3]:
            xs = saved.index_select(1, slots)  # (N, k, b)
            grad_delta = torch.einsum("nki,nkj->kij", g_blocks, xs).to(delta.dtype)  # dΔ_i = g_rowsᵀ x_cols
        if ctx.needs_input_grad[1]:
            raise RuntimeError("SMT keeps the dense weight frozen; it must not require grad")
        return grad_x, None, grad_bias, grad_delta, None, None, None, None


class BlockSparseLinear(nn.Module):
    """A frozen ``nn.Linear`` plus trainable updates of ``k`` of its ``b × b`` blocks.

    ``blocks`` are row-major indices in the ``(out/b, in/b)`` block grid. Keeps ``weight``/``bias`` under
    their original names, so the base model's state-dict keys load unchanged.
    """

    def __init__(self, linear: nn.Linear, blocks: list[int], block_size: int) -> None:
        super().__init__()
        b = block_size
        self.in_features, self.out_features, self.block_size = linear.in_features, linear.out_features, b
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        n_cols = self.in_features // b
        index = torch.tensor(sorted(blocks), dtype=torch.long, device=self.weight.device)
        self.register_buffer("smt_rows", index // n_cols)
        self.register_buffer("smt_cols", index % n_cols)
        used, slot = torch.unique(self.smt_cols, return_inverse=True)
        self.register_buffer("smt_used_cols", used, persistent=False)
        self.register_buffer("smt_col_slot", slot, persistent=False)
        self.smt_delta = nn.Parameter(torch.zeros(len(blocks), b, b, dtype=self.weight.dtype,
                                                  device=self.weight.device))

    @property
    def blocks(self) -> list[int]:
        return (self.smt_rows * (self.in_features // self.block_size) + self.smt_cols).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BlockSparseLinearFn.apply(x, self.weight, self.bias, self.smt_delta, self.smt_rows, self.smt_cols,
                                          self.smt_used_cols, self.smt_col_slot)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W₀ with every selected block updated: W[block_i] = W₀[block_i] + Δ_i."""
        b = self.block_size
        weight = self.weight.detach().clone()
        view = weight.view(self.out_features // b, b, self.in_features // b, b).permute(0, 2, 1, 3)
        view[self.smt_rows, self.smt_cols] += self.smt_delta.to(weight.dtype)  # indices are unique
        return weight

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weight (zero inference overhead)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.weight = nn.Parameter(self.merged_weight(), requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"blocks={self.smt_delta.shape[0]}x{self.block_size}², bias={self.bias is not None}")
