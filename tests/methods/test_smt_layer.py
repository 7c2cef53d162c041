"""SMT block-sparse linear against a reference built block by block in Python (independent of the layer's
vectorised merge): forward, input gradient and block gradients, 2-D/3-D inputs, bias, half precision."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from peftlab.methods.smt.layer import BlockSparseLinear, block_segments, merge_blocks

B = 8


def loop_merged(weight: torch.Tensor, blocks: list[int], delta: torch.Tensor, b: int) -> torch.Tensor:
    """W₀ + Δ written block by block (the official layer's loop, without its in-place copy)."""
    merged = weight.detach().clone()
    n_cols = weight.shape[1] // b
    for i, index in enumerate(sorted(blocks)):
        r, c = divmod(index, n_cols)
        merged[r * b:(r + 1) * b, c * b:(c + 1) * b] += delta[i]
    return merged


def make_layer(blocks: list[int], bias: bool, out_features: int = 32, in_features: int = 48,
               dtype: torch.dtype = torch.float64) -> tuple[nn.Linear, BlockSparseLinear]:
    torch.manual_seed(0)
    lin = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    layer = BlockSparseLinear(copy.deepcopy(lin), blocks, B)
    layer.smt_delta.data.normal_()
    layer.smt_delta.requires_grad_(True)
    return lin, layer


def test_merge_blocks_matches_block_loop() -> None:
    weight = torch.randn(32, 48, dtype=torch.float64)
    blocks = [0, 5, 7, 11, 12, 23]  # 4 × 6 grid: shared rows and shared columns
    delta = torch.randn(len(blocks), B, B, dtype=torch.float64)
    index = torch.tensor(blocks)
    segments = block_segments(index // 6, index % 6, B, 6)
    assert segments.shape == (len(blocks) * B,)
    merged = merge_blocks(weight, delta, segments)
    assert torch.equal(merged, loop_merged(weight, blocks, delta, B))  # unique indices: exact
    assert not torch.equal(merged, weight)  # a new tensor; W₀ itself untouched
    assert merged.data_ptr() != weight.data_ptr()


@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48)])
@pytest.mark.parametrize(("blocks", "bias"), [([0, 5, 7, 11, 12, 23], True), ([2, 8, 14], False), ([23], True)])
def test_forward_and_gradients_match_dense_reference(shape: tuple[int, ...], blocks: list[int], bias: bool) -> None:
    lin, layer = make_layer(blocks, bias)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    ref_w = loop_merged(lin.weight, blocks, layer.smt_delta.detach(), B).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = nn.functional.linear(x_ref, ref_w, lin.bias)
    assert y.shape == (*shape[:-1], 32)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)  # float64: only summation order differs
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    for i, index in enumerate(sorted(blocks)):
        r, c = divmod(index, 6)
        expected = ref_w.grad[r * B:(r + 1) * B, c * B:(c + 1) * B]
        torch.testing.assert_close(layer.smt_delta.grad[i], expected, rtol=0, atol=1e-12)
    assert layer.weight.grad is None
    if bias:
        assert layer.bias.grad is None  # frozen


def test_block_grads_without_input_grad() -> None:
    """First trainable layer of a network: no input gradient wanted, block gradients still exact."""
    blocks = [1, 9, 16]
    lin, layer = make_layer(blocks, True)
    x = torch.randn(4, 48, dtype=torch.float64)
    g = torch.randn(4, 32, dtype=torch.float64)
    layer(x).backward(g)
    ref_w = loop_merged(lin.weight, blocks, layer.smt_delta.detach(), B)
    full = g.t() @ x  # dL/dW of y = x Wᵀ
    for i, index in enumerate(sorted(blocks)):
        r, c = divmod(index, 6)
        torch.testing.assert_close(layer.smt_delta.grad[i], full[r * B:(r + 1) * B, c * B:(c + 1) * B],
                                   rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.merged_weight(), ref_w, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float64(dtype: torch.dtype) -> None:
    blocks = [0, 5, 7, 11]
    _, layer = make_layer(blocks, True)
    half = copy.deepcopy(layer).to(dtype)
    x = torch.randn(6, 48, dtype=torch.float64)
    g = torch.randn(6, 32, dtype=torch.float64)
    layer(x).backward(g)
    y = half(x.to(dtype))
    y.backward(g.to(dtype))
    assert y.dtype == dtype and half.smt_delta.grad.dtype == dtype
    # half precision: relative error of a few units of its 8/11-bit mantissa over 48-term sums
    torch.testing.assert_close(half.smt_delta.grad.double(), layer.smt_delta.grad, rtol=5e-2, atol=5e-2)


def test_cpu_autocast_bf16() -> None:
    """Mixed precision (Lightning ``bf16-mixed``): fp32 parameters, bf16 matmuls, fp32 block gradients."""
    _, layer = make_layer([0, 5, 7, 11], True, dtype=torch.float32)
    x = torch.randn(2, 3, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert layer.smt_delta.grad.dtype == torch.float32 and torch.isfinite(layer.smt_delta.grad).all()
    assert x.grad is not None and x.grad.dtype == torch.float32
