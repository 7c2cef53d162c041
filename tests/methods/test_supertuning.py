"""Super-Tuning through peft: property matrix (Super and Supra), magnitude support, count formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftlab.budget import compose, count
from peftlab.errors import ConfigError
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import validate
from tests.conftest import TINY, compose_config
from tests.methods.properties import MethodProperties

HIDDEN, FFN, LAYERS, LABELS = 64, 128, 2, 2  # tiny_bert
HEAD = HIDDEN * LABELS + LABELS
PEFT_HEAD = r"classifier\.modules_to_save\.default\.(weight|bias)"
SPARSITY = 0.9


def super_count(sparsity: float, shapes: list[tuple[int, int]], r: int | None = None) -> int:
    """Σ over targets of int(d_in·d_out·(1 − sparsity)) (+ r·(d_in + d_out) for Supra's LoRA branch)."""
    return sum(int(d_in * d_out * (1 - sparsity)) + (r * (d_in + d_out) if r else 0) for d_in, d_out in shapes)


class TestSupertuningProperties(MethodProperties):
    method = "supertuning"
    overrides = [f"method.sparsity={SPARSITY}", "method.lr=1e-2"]
    trainable_regex = rf".*(supertuning_values\.default|{PEFT_HEAD})"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return super_count(SPARSITY, [(HIDDEN, HIDDEN)] * 2 * LAYERS) + HEAD


class TestSupraProperties(MethodProperties):
    method = "supertuning"
    overrides = [f"method.sparsity={SPARSITY}", "method.r=2", "method.lr=1e-2"]
    trainable_regex = rf".*(supertuning_values\.default|supertuning_lora_[AB]\.default\.weight|{PEFT_HEAD})"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return super_count(SPARSITY, [(HIDDEN, HIDDEN)] * 2 * LAYERS, r=2) + HEAD


@pytest.mark.parametrize("select_top", [True, False])
def test_support_is_the_magnitude_extreme(select_top: bool) -> None:
    spec, method, task = validate(compose_config(["model=tiny_bert", "method=supertuning",
                                                  f"method.select_top={str(select_top).lower()}"]))
    torch.manual_seed(0)
    base = load_backbone(spec, task.head, task.num_labels)
    weight = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    model = method.apply(base, spec)
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    chosen = layer.supertuning_indices["default"].long()
    k = int(weight.numel() * (1 - 0.99))
    assert chosen.numel() == k
    expected = torch.topk(weight.abs().flatten(), k, largest=select_top).indices
    assert set(chosen.tolist()) == set(expected.tolist())


def test_budget_count_formula() -> None:
    budget = count(compose([*TINY, "method=supertuning", "method.targets=[q,k,v,up,down]"]))
    shapes = [(HIDDEN, HIDDEN)] * 3 + [(HIDDEN, FFN), (FFN, HIDDEN)]
    assert budget.trainable == LAYERS * super_count(0.99, shapes) + HEAD


@pytest.mark.parametrize(("override", "match"), [("method.sparsity=1.0", "sparsity"), ("method.r=0", "method.r"),
                                                 ("method.alpha=4", "Super mode")])
def test_bad_settings(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(compose_config(["model=tiny_bert", "method=supertuning", override]))
