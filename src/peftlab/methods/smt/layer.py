"""Block-sparse linear layer of SMT with its own autograd (arXiv 2405.15525 §3.2; official ``SparseLinear``).

y = x (W₀ + S(Δ))ᵀ + b,   S(Δ) = the (out, in) matrix that is Δ_i on block i (block-row r_i, column c_i), 0 elsewhere

W₀ (and the bias) stay frozen and never get a ``.grad``; the only trainable tensor is ``smt_delta`` of
shape ``(k, b, b)``, the updates of the k selected blocks. Backward computes dΔ_i = g[..., rows(r_i)]ᵀ ·
x[..., cols(c_i)] summed over batch and tokens (one batched matmul over the k blocks), exactly the
full-weight gradient restricted to the block, and the dense input gradient g (W₀ + S(Δ)).

Departures from the official code, all to save time or memory, none changing the maths:
- the official layer copies the trainable block values into W in a Python loop on every forward; we keep
  the update Δ apart and build W₀ + S(Δ) as a temporary with one vectorised ``index_add`` (one weight-sized
  copy, freed after the matmul; rebuilt in backward rather than saved). This is cheaper on CPU than adding
  the k block products to the dense output (measured in ``scripts/bench_smt_layer.py``, docs/smt.md
  "Memory and speed"). Training Δ from 0 with Adam and weight decay 0 (the paper's setting) follows the
  same trajectory as training the block values. Δ is fp32 (the precision rule); with a half-precision W₀,
  W₀ + Δ is rounded to the weight dtype before the matmul, as the official layer's bf16 block values are
  rounded from DeepSpeed's fp32 master;
- the official layer saves the whole input for backward; we save only the input column-blocks that some
  selected block reads (the input itself when every column-block is read, to avoid a useless copy);
- any number of leading dims (2-D or 3-D inputs), bias supported, any module name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def merge_blocks(weight: torch.Tensor, delta: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """A new tensor W₀ + S(Δ); ``segments`` indexes the ``b``-long row segments of the blocks in ``weight``
    viewed as ``(out·in/b, b)`` (see :func:`block_segments`). Indices are unique, so the sum is exact."""
    b = delta.shape[-1]
    merged = torch.index_add(weight.reshape(-1, b), 0, segments, delta.reshape(-1, b).to(weight.dtype))
    return merged.view_as(weight)


def block_segments(rows: torch.Tensor, cols: torch.Tensor, block_size: int, n_cols: int) -> torch.Tensor:
    """Row-segment indices (k·b,) of blocks (r_i, c_i): block row j of block i starts at element
    ((r_i·b + j)·in + c_i·b), i.e. segment (r_i·b + j)·n_cols + c_i of the ``(out·in/b, b)`` view."""
    offsets = torch.arange(block_size, device=rows.device)
    return ((rows * block_size).unsqueeze(1) + offsets).mul(n_cols).add(cols.unsqueeze(1)).reshape(-1)


class _BlockSparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, delta: torch.Tensor,
                segments: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, used_cols: torch.Tensor,
                col_slot: torch.Tensor) -> torch.Tensor:
        b = delta.shape[-1]
        y = F.linear(x, merge_blocks(weight, delta, segments), bias)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        n = x2.shape[0]
        if used_cols.numel() == x2.shape[1] // b:
            saved, slots = x2.view(n, -1, b), cols  # every column-block is read: keep the input itself, no copy
        else:
            saved, slots = x2.view(n, -1, b).index_select(1, used_cols), col_slot  # (N, u, b): only those read
        ctx.save_for_backward(saved, slots, weight, delta, segments, rows)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved, slots, weight, delta, segments, rows = ctx.saved_tensors
        b = delta.shape[-1]
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_delta = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ merge_blocks(weight, delta, segments).to(g.dtype)  # (N, in) = g (W₀ + S(Δ))
            grad_x = grad_x.view(*grad_out.shape[:-1], grad_x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        if ctx.needs_input_grad[3]:
            # (k, N, b) operands of one batched matmul; gathering from contiguous (R, N, b) / (u, N, b) copies
            # is faster on CPU than gathering straight from the strided (N, R, b) views
            g_blocks = g.view(g.shape[0], -1, b).transpose(0, 1).contiguous().index_select(0, rows)  # block rows
            x_blocks = saved.transpose(0, 1).contiguous().index_select(0, slots).to(g.dtype)  # block columns
            grad_delta = torch.bmm(g_blocks.transpose(1, 2), x_blocks).to(delta.dtype)  # dΔ_i = g_rowsᵀ x_cols
        if ctx.needs_input_grad[1]:
            raise RuntimeError("SMT keeps the dense weight frozen; it must not require grad")
        return grad_x, None, grad_bias, grad_delta, None, None, None, None, None


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
        self.register_buffer("smt_segments", block_segments(self.smt_rows, self.smt_cols, b, n_cols), persistent=False)
        # at least fp32 whatever the weight dtype: a trained tensor (the precision rule, peftlab.precision)
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        self.smt_delta = nn.Parameter(torch.zeros(len(blocks), b, b, dtype=dtype, device=self.weight.device))

    @property
    def blocks(self) -> list[int]:
        return (self.smt_rows * (self.in_features // self.block_size) + self.smt_cols).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BlockSparseLinearFn.apply(x, self.weight, self.bias, self.smt_delta, self.smt_segments, self.smt_rows,
                                          self.smt_cols, self.smt_used_cols, self.smt_col_slot)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W₀ with every selected block updated: W[block_i] = W₀[block_i] + Δ_i."""
        return merge_blocks(self.weight.detach(), self.smt_delta.detach(), self.smt_segments)

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
