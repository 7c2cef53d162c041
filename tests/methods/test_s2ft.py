"""S2FT: property matrix on tiny LLaMA and tiny BERT, block gradients = full gradient on the slice, the
budget formula of the official scripts (LLaMA3-8B, LLaMA2-7B), seeded selection, config errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from peftlab.budget import compose, count
from peftlab.errors import ConfigError
from peftlab.methods.base import Method
from peftlab.methods.s2ft import S2Linear
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import validate
from tests.conftest import TINY, compose_config
from tests.methods.properties import SEED, MethodProperties

HIDDEN, FFN, LAYERS, HEADS, LABELS = 64, 128, 2, 4, 2  # tiny_llama and tiny_bert
HEAD_DIM = HIDDEN // HEADS
RATIOS = ["method.v_ratio=0.25", "method.o_ratio=0.25", "method.u_ratio=0.0625", "method.d_ratio=0.0625"]
# 8 heads over 2 layers: int(0.25·8) = 2 heads for v and for o; 256 channels: int(0.0625·256) = 16 for up and down
BLOCKS = 2 * (2 * HEAD_DIM * HIDDEN) + 2 * (16 * HIDDEN)


class TestS2ftLlamaProperties(MethodProperties):
    """tiny_llama as a causal LM (the method's home: LLaMA commonsense); no head is trained."""

    method = "s2ft"
    model = "tiny_llama"
    overrides = ["task=commonsense_synthetic", *RATIOS, "method.lr=1e-2"]
    trainable_regex = r".*\.s2_delta"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return BLOCKS

    def _spec_head(self) -> tuple[ModelSpec, str, int | None]:
        return super()._spec_head()[0], "causal_lm", None

    def fresh(self) -> tuple[nn.Module, Method, ModelSpec]:
        spec, head, labels = self._spec_head()
        _, method, _ = validate(compose_config([f"model={self.model}", f"method={self.method}", *self.overrides]))
        torch.manual_seed(SEED)
        return method.apply(load_backbone(spec, head, labels), spec), method, spec

    def build(self) -> tuple[nn.Module, Method, ModelSpec, dict[str, Any]]:
        model, method, spec = self.fresh()
        batch = self.batch(spec)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # next-token loss
        return model, method, spec, {**batch, "labels": labels}


class TestS2ftBertProperties(MethodProperties):
    method = "s2ft"
    overrides = [*RATIOS, "method.lr=1e-2"]
    trainable_regex = r".*(\.s2_delta|classifier\.(weight|bias))"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return BLOCKS + HIDDEN * LABELS + LABELS


@pytest.mark.parametrize("side", ["rows", "cols"])
def test_block_gradient_is_the_full_gradient_on_the_slice(side: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(12, 10)
    index = [1, 4, 5, 9]
    layer = S2Linear(nn.Linear(12, 10), side, index)
    layer.weight.data.copy_(linear.weight.data)
    layer.bias.data.copy_(linear.bias.data)
    with torch.no_grad():
        layer.s2_delta.normal_()  # a non-zero block, so the forward is checked too
        linear.weight.add_(layer.delta_weight())
    x = torch.randn(3, 5, 12)
    target = torch.randn(3, 5, 10)
    ((layer(x) - target) ** 2).sum().backward()
    ((linear(x) - target) ** 2).sum().backward()
    full = linear.weight.grad[index] if side == "rows" else linear.weight.grad[:, index]
    torch.testing.assert_close(layer.s2_delta.grad, full)  # same math, different summation order
    assert layer.weight.grad is None and layer.bias.grad is None
    torch.testing.assert_close(layer.to_linear()(x), linear(x))


def test_budget_formula_of_the_official_scripts() -> None:
    # LLaMA3-8B script: d_ratio 0.03 → int(0.03·14336·32) = 13762 down-proj columns × 4096
    llama3 = count(compose(["model=llama3_8b", "task=commonsense_synthetic", "method=s2ft"]))
    assert llama3.trainable == int(0.03 * 14336 * 32) * 4096 == 56_369_152
    assert llama3.extra == {"down_channels": 13762}
    # LLaMA2-7B script: o_ratio 0.052 (int(0.052·32·32) = 53 heads × 128 × 4096) + d_ratio 0.02 (7045 ch × 4096)
    llama2 = count(compose(["model=llama2_7b", "task=commonsense_synthetic", "method=s2ft", "method.o_ratio=0.052",
                            "method.d_ratio=0.02"]))
    assert llama2.trainable == 53 * 128 * 4096 + 7045 * 4096 == 56_643_584


def test_budget_equals_the_applied_tiny_model() -> None:
    budget = count(compose([*TINY, "method=s2ft", *RATIOS, "method.train_head=false"]))
    assert budget.trainable == BLOCKS
    assert budget.extra == {"v_heads": 2, "o_heads": 2, "up_channels": 16, "down_channels": 16}


def test_selection_is_seeded_and_spread_over_layers() -> None:
    def selection(seed: int) -> dict[str, list[int]]:
        cfg = compose(["model=tiny_llama", "task=commonsense_synthetic", "method=s2ft", "method.d_ratio=0.25",
                       f"method.seed={seed}"])
        spec, method, task = validate(cfg)
        model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
        return {n: m.s2_index.tolist() for n, m in model.named_modules() if isinstance(m, S2Linear)}

    first = selection(0)
    assert first == selection(0) and first != selection(1)
    assert sum(len(v) for v in first.values()) == int(0.25 * FFN * LAYERS)
    assert all(name.endswith("mlp.down_proj") for name in first)


@pytest.mark.parametrize("bad", [["method.d_ratio=1.5"], ["method.d_ratio=0"], ["method.d_ratio=0.001"],
                                 ["+method.targets=[v]"]])
def test_bad_ratios_fail_before_training(bad: list[str]) -> None:
    with pytest.raises(ConfigError, match="ratio"):
        count(compose(["model=tiny_llama", "task=commonsense_synthetic", "method=s2ft", *bad]))
