"""SHiRA through peft: property matrix, LoRA-r's count, independent seeded supports, equality with peft."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

from peftlab.budget import compose, count
from peftlab.errors import ConfigError
from peftlab.methods.shira import independent_random_masks
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import validate
from tests.conftest import TINY, compose_config
from tests.methods.properties import MethodProperties

HIDDEN, LAYERS, LABELS, R = 64, 2, 2, 4  # tiny_bert
HEAD = HIDDEN * LABELS + LABELS
PEFT_HEAD = r"classifier\.modules_to_save\.default\.(weight|bias)"


def shira_count(r: int, shapes: list[tuple[int, int]]) -> int:
    """Σ over targets of r·(d_in + d_out): LoRA-r's count (SHiRA paper / peft ShiraLayer)."""
    return sum(r * (d_in + d_out) for d_in, d_out in shapes)


class TestShiraProperties(MethodProperties):
    method = "shira"
    overrides = [f"method.r={R}", "method.lr=1e-2"]
    trainable_regex = rf".*(shira_weight\.default|{PEFT_HEAD})"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return shira_count(R, [(HIDDEN, HIDDEN)] * 2 * LAYERS) + HEAD  # q and v in each layer


def supports(model: nn.Module) -> list[torch.Tensor]:
    return [m.shira_indices["default"] for m in model.modules() if hasattr(m, "shira_indices")]


def test_supports_are_independent_per_layer_and_follow_the_seed() -> None:
    spec, method, task = validate(compose_config(["model=tiny_bert", "method=shira", "seed=3"]))
    assert method.config.mask_seed == 3
    first = supports(method.apply(load_backbone(spec, task.head, task.num_labels), spec))
    again = supports(method.__class__(method.config).apply(load_backbone(spec, task.head, task.num_labels), spec))
    assert len(first) == 2 * LAYERS and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # peft's own random_mask would repeat the support per layer
    assert all(s.shape[1] == 8 * (HIDDEN + HIDDEN) for s in first)  # default r=8


def test_mask_fn_draws_the_requested_count() -> None:
    layer = nn.Linear(32, 16)
    mask = independent_random_masks(0)(layer, 2)
    assert mask.shape == layer.weight.shape and int(mask.sum()) == 2 * (32 + 16)


def test_budget_count_formula() -> None:
    budget = count(compose([*TINY, "method=shira", f"method.r={R}", "method.targets=[q,k,v,up,down]"]))
    ffn = 128
    shapes = [(HIDDEN, HIDDEN)] * 3 + [(HIDDEN, ffn), (ffn, HIDDEN)]
    assert budget.trainable == LAYERS * shira_count(R, shapes) + HEAD
    lora = count(compose([*TINY, "method=lora", f"method.r={R}", "method.targets=[q,k,v,up,down]"]))
    assert budget.trainable == lora.trainable  # SHiRA-r = LoRA-r parameters by construction


def test_equals_peft_directly() -> None:
    props = TestShiraProperties()
    model, method, spec, batch = props.build()
    props.train_steps(model, method, batch, 2)
    config = peft.ShiraConfig(r=R, target_modules=["query", "value"], modules_to_save=["classifier"])
    direct = peft.get_peft_model(load_backbone(spec, "seq_cls", LABELS), config)
    for theirs, ours in zip(direct.modules(), model.modules(), strict=True):
        if hasattr(ours, "shira_indices"):
            theirs.shira_indices["default"] = ours.shira_indices["default"].clone()
    direct.load_state_dict(model.state_dict())
    torch.testing.assert_close(props.outputs(direct, batch), props.outputs(model, batch), atol=0, rtol=0)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="method.r"):
        validate(compose_config(["model=tiny_bert", "method=shira", "method.r=0"]))
    spec, method, task = validate(compose_config(["model=tiny_bert", "method=shira", "method.r=40"]))
    with pytest.raises(ConfigError, match="lower method.r"):  # 40·(64 + 64) > 64·64
        method.apply(load_backbone(spec, task.head, task.num_labels), spec)
