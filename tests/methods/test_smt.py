"""SMT: property matrix, exact block gradients, selection, invalid settings, the official ratio."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from torch import nn

from peftlab.errors import ConfigError
from peftlab.methods.base import Method, count_parameters
from peftlab.methods.smt.layer import BlockSparseLinear
from peftlab.methods.smt.method import SparseMatrixTuning, two_d_numel
from peftlab.methods.smt.selection import block_scores, budget_blocks, select_blocks
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import validate
from tests.conftest import compose_config
from tests.methods.properties import MethodProperties

B = 16  # tiny_bert / tiny_llama hidden 64 → 4×4 blocks per attention matrix
K = 6
SMT = ["method.block_size=16", "method.budget_unit=blocks", f"method.budget={K}", "method.warmup_steps=2",
       "method.warmup_mode=grad_only", "method.smt_lr=1e-2"]


def warm(method: Method, model: nn.Module, batch: dict[str, Any]) -> nn.Module:
    assert isinstance(method, SparseMatrixTuning)
    return method.warmup(model, itertools.repeat(batch))


NO_DROPOUT = ["+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]


class TestSmtProperties(MethodProperties):
    method = "smt"
    # frozen random head: only the blocks move the loss, so dropout noise off and a large block lr
    overrides = [*SMT, "method.train_head=false", "method.smt_lr=5e-2", *NO_DROPOUT]
    trainable_regex = r".*\.smt_delta"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return K * B * B  # k × block_size²

    def prepare(self, method: Method, model: nn.Module, batch: dict[str, Any]) -> nn.Module:
        return warm(method, model, batch)


class TestSmtWithHeadProperties(TestSmtProperties):
    overrides = [*SMT, "method.warmup_mode=full", "method.lr=1e-3", *NO_DROPOUT]
    trainable_regex = r".*\.smt_delta|classifier\.(weight|bias)"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return K * B * B + 64 * 2 + 2  # blocks + classifier (hidden × labels + labels)


def build(model_name: str, *overrides: str) -> tuple[nn.Module, SparseMatrixTuning, ModelSpec, dict[str, Any]]:
    """SMT applied to a tiny model: tiny_bert as a pair classifier, tiny_llama as a causal LM."""
    task = ["task=commonsense_synthetic"] if model_name == "tiny_llama" else []  # a causal LM serves causal_lm tasks
    cfg = compose_config([f"model={model_name}", "method=smt", *task, *SMT, *overrides])
    spec, method, task = validate(cfg)
    torch.manual_seed(0)
    batch = MethodProperties.batch(spec)
    if model_name == "tiny_llama":
        model = load_backbone(spec, "causal_lm", None)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    else:
        model = load_backbone(spec, task.head, task.num_labels)
    return method.apply(model, spec), method, spec, batch  # type: ignore[return-value]


# ---------------- exact gradients ----------------
@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_bert"])
def test_block_grads_equal_full_grad_restricted(model_name: str) -> None:
    model, method, _, batch = build(model_name, "method.targets=[q,k,v]", "method.budget=12")
    model = warm(method, model, batch).double()
    dense = copy.deepcopy(model)
    torch.manual_seed(1)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BlockSparseLinear)}
    for m in layers.values():
        m.smt_delta.data.normal_(0, 0.05)  # non-zero Δ: the forward and input gradient are checked too
    dense = method.merge(dense)
    with torch.no_grad():
        for n, m in layers.items():
            dense.get_submodule(n).weight.copy_(m.merged_weight())
    for p in dense.parameters():
        p.requires_grad_(True)
    for p in model.parameters():
        p.requires_grad_(True)
    for m in layers.values():
        m.weight.requires_grad_(False)  # the layer refuses a trainable dense weight
    model.train(False), dense.train(False)  # no dropout: the two forwards must see the same graph
    loss_sparse, loss_dense = model(**batch).loss, dense(**batch).loss
    loss_sparse.backward()
    loss_dense.backward()
    torch.testing.assert_close(loss_sparse, loss_dense, rtol=0, atol=1e-12)
    for n, m in layers.items():
        assert m.weight.grad is None
        full = dense.get_submodule(n).weight.grad
        rows, cols = m.smt_rows, m.smt_cols
        expected = full.view(m.out_features // B, B, m.in_features // B, B).permute(0, 2, 1, 3)[rows, cols]
        torch.testing.assert_close(m.smt_delta.grad, expected, rtol=1e-10, atol=1e-12)  # float64: tight
    # gradients upstream of the sparse layers (through the input gradient) match too
    dense_params = dict(dense.named_parameters())
    upstream = [n for n in dense_params if "embeddings" in n or "embed_tokens" in n]
    assert upstream
    for name in upstream:
        torch.testing.assert_close(model.get_parameter(name).grad, dense_params[name].grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("blocks", "bias"), [([0, 5, 6, 15], True), ([1, 5, 9, 13], False), ([2], True)])
def test_layer_3d_input_bias_and_column_saving(blocks: list[int], bias: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 64, bias=bias).double()
    layer = BlockSparseLinear(copy.deepcopy(lin), blocks, B)
    layer.smt_delta.data.normal_()
    x = torch.randn(3, 5, 64, dtype=torch.float64, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    ref_w = layer.merged_weight().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = nn.functional.linear(x_ref, ref_w, lin.bias)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    grid = ref_w.grad.view(4, B, 4, B).permute(0, 2, 1, 3)
    torch.testing.assert_close(layer.smt_delta.grad, grid[layer.smt_rows, layer.smt_cols], rtol=0, atol=1e-12)
    n_used = len({i % 4 for i in blocks})
    inputs = [t for t in saved if t.dim() == 3 and t.shape[-1] == B]
    assert inputs and inputs[0].shape[1] == (4 if n_used == 4 else n_used)  # only the column-blocks read


# ---------------- selection ----------------
def brute_scores(grad: torch.Tensor, b: int, score: str) -> torch.Tensor:
    out = torch.zeros(grad.shape[0] // b, grad.shape[1] // b)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            blk = grad[r * b:(r + 1) * b, c * b:(c + 1) * b]
            out[r, c] = {"mean_abs": blk.mean().abs(), "abs_mean": blk.abs().mean(), "l1": blk.abs().sum(),
                         "l2": blk.norm()}[score]
    return out


@pytest.mark.parametrize("score", ["mean_abs", "abs_mean", "l1", "l2"])
def test_scores_match_brute_force(score: str) -> None:
    grad = torch.randn(32, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(block_scores(grad, 8, score), brute_scores(grad, 8, score))


def test_mean_abs_ignores_sign_flipping_blocks() -> None:
    grad = torch.zeros(8, 8)
    grad[:4, :4] = 0.5  # consistent sign: |mean| = 0.5, mean|.| = 0.5
    grad[4:, 4:] = torch.tensor([[1.0, -1.0] * 2] * 4)  # flips sign: |mean| = 0, mean|.| = 1
    assert select_blocks({"w": block_scores(grad, 4, "mean_abs")}, 1, "global") == {"w": [0]}
    assert select_blocks({"w": block_scores(grad, 4, "abs_mean")}, 1, "global") == {"w": [3]}
    assert select_blocks({"w": block_scores(grad, 4, "l2")}, 1, "global") == {"w": [3]}


def test_global_vs_per_matrix() -> None:
    strong = torch.tensor([[9.0, 8.0], [7.0, 6.0]])
    weak = torch.tensor([[0.1, 0.4], [0.3, 0.2]])
    weaker = torch.tensor([[0.01, 0.02], [0.05, 0.03]])
    scores = {"a": strong, "b": weak, "c": weaker}
    assert select_blocks(scores, 3, "global") == {"a": [0, 1, 2]}
    assert select_blocks(scores, 3, "per_matrix") == {"a": [0], "b": [1], "c": [2]}
    # 4 = 1 each + 1 left over, which goes to the best next block (a's 8.0)
    assert select_blocks(scores, 4, "per_matrix") == {"a": [0, 1], "b": [1], "c": [2]}


def test_method_selects_known_top_blocks_from_constructed_gradients() -> None:
    model, method, _, _ = build("tiny_llama", "method.targets=[q,v]", "method.budget=3")
    names = sorted(n for pool in method.pools.values() for n in pool)
    for name in names:
        method.grad_sums[name] = torch.full((64, 64), 0.01)
    method.grad_sums[names[0]][16:32, 48:64] = 5.0  # block (1, 3) = 7
    method.grad_sums[names[-1]][0:16, 0:16] = 4.0  # block 0
    method.grad_sums[names[-1]][48:64, 16:32] = -3.0  # block (3, 1) = 13; sign ignored by mean_abs
    method.switch(model, 2)
    assert method.selection == {names[0]: [7], names[-1]: [0, 13]}
    assert method.method_state()["counts"]["per_type"] == {"q": 1, "v": 2}


def test_only_selected_blocks_change() -> None:
    model, method, _, batch = build("tiny_llama", "method.targets=[v]", "method.mlp_budget=4")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    model = warm(method, model, batch)  # grad_only: the warm-up updates nothing
    MethodProperties().train_steps(model, method, batch, 4)
    merged = method.merge(model).state_dict()
    assert merged.keys() == before.keys()
    changed = 0
    for n, w in merged.items():
        module = n.rsplit(".", 1)[0]
        if module not in method.selection or not n.endswith("weight"):
            assert torch.equal(w, before[n]), f"{n} changed"
            continue
        rows, cols = w.shape
        diff = (w != before[n]).view(rows // B, B, cols // B, B).permute(0, 2, 1, 3).any(-1).any(-1).flatten()
        assert set(diff.nonzero().flatten().tolist()) <= set(method.selection[module])
        changed += int(diff.sum())
    assert changed == K + 4, "every selected block (6 attention + 4 MLP) should have moved"
    assert method.method_state()["counts"]["per_type"].keys() <= {"v", "gate", "up", "down"}


def test_grad_only_warmup_keeps_no_backbone_grads() -> None:
    model, method, _, batch = build("tiny_bert")
    loss = model(**batch).loss
    loss.backward()
    assert method.grad_sums and all(s.dtype == torch.float32 for s in method.grad_sums.values())
    backbone = [n for n, p in model.named_parameters() if p.grad is not None and "classifier" not in n]
    assert backbone == [], f"grad_only warm-up left gradients on {backbone[:3]}"


def test_adapter_reloads_without_method_state() -> None:
    model, method, _, batch = build("tiny_bert")
    model = warm(method, model, batch)
    MethodProperties().train_steps(model, method, batch, 2)
    expected = MethodProperties.outputs(model, batch)
    state = method.adapter_state_dict(model)
    assert {k.rsplit(".", 1)[-1] for k in state} == {"smt_delta", "smt_rows", "smt_cols", "weight", "bias"}
    fresh, fresh_method, _, _ = build("tiny_bert")
    fresh = fresh_method.load_adapter_state_dict(fresh, state)
    torch.testing.assert_close(MethodProperties.outputs(fresh, batch), expected, atol=1e-6, rtol=0)


# ---------------- invalid settings, before training ----------------
@pytest.mark.parametrize(("overrides", "message"), [
    (["method.block_size=24"], "does not divide"),
    (["method.budget=1000"], "exceeds"),
    (["method.budget=0"], "zero budget"),
    (["method.budget_unit=ratio", "method.budget=0.00001"], "gives 0 blocks"),
    (["method.targets=[nope]"], "unknown target"),
    (["method.targets=[q,o]"], "never tunes"),
    (["method.warmup_steps=0"], "warmup_steps"),
    (["method.score=max"], "method.score"),
    (["method.pooled=true", "method.mlp_budget=3"], "pooled"),
])
def test_invalid_settings_fail_before_training(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build("tiny_llama", *overrides)


def test_official_ratio_gives_863_blocks_on_llama_7b() -> None:
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                      num_hidden_layers=32, num_attention_heads=32)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    k = budget_blocks("ratio", 0.0084, 256, two_d_numel(model))
    assert (k, k * 256 * 256) == (863, 56_557_568)  # HectorHHZ/Sparse_Matrix_Tuning README numbers


def test_planned_trainable_matches_after_switch() -> None:
    model, method, spec, batch = build("tiny_bert")
    planned = SparseMatrixTuning(method.config).planned_trainable(model, spec)
    model = warm(method, model, batch)
    assert planned == count_parameters(model)[0] == K * B * B + 64 * 2 + 2
