"""SPT-LoRA: property matrix after the sensitivity phase (tiny BERT), allocation rules, sensitivity = Σ grad²,
only selected entries move, ViT merge, budget calculator."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from torch import nn

from peftlab.budget import compose, count
from peftlab.errors import ConfigError
from peftlab.methods.base import Method
from peftlab.methods.spt import SptLora
from peftlab.methods.spt.allocation import Entry, allocate
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import validate
from tests.conftest import compose_config
from tests.methods.properties import MethodProperties

NO_DROPOUT = ["+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]
SPT = ["method.budget=3000", "method.sensitivity_batches=2", "method.rank=8", *NO_DROPOUT]


def sense(method: Method, model: nn.Module, batch: dict[str, Any]) -> nn.Module:
    assert isinstance(method, SptLora)
    return method.sensitivity(model, itertools.repeat(batch))


def plan_formula(method: SptLora, model: nn.Module, rank: int) -> int:
    """LoRA r·(d_in + d_out), full vector = its size, sparse = its selected entries."""
    total = 0
    for name, entry in method.plan.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if entry["mode"] == "lora":
            total += rank * (module.in_features + module.out_features)
        elif entry["mode"] == "full":
            total += module.get_parameter(name.rsplit(".", 1)[1]).numel()
        else:
            total += getattr(module.parametrizations, name.rsplit(".", 1)[1])[0].spt_index.numel()
    return total


class TestSptProperties(MethodProperties):
    method = "spt_lora"
    overrides = [*SPT, "method.lr=1e-2"]
    trainable_regex = r".*\.(lora_[AB]|spt_values|bias|weight)"  # full vectors keep their own names

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        method = self._method
        modes = {v["mode"] for v in method.plan.values()}
        assert modes == {"lora", "sparse", "full"}, f"budget 3000 should mix all three modes, got {modes}"
        return plan_formula(method, model, 8) + 64 * 2 + 2  # + classifier

    def prepare(self, method: Method, model: nn.Module, batch: dict[str, Any]) -> nn.Module:
        self._method = method
        return sense(method, model, batch)


def build(*overrides: str) -> tuple[nn.Module, SptLora, dict[str, Any]]:
    cfg = compose_config(["model=tiny_bert", "method=spt_lora", *SPT, *overrides])
    spec, method, task = validate(cfg)
    torch.manual_seed(0)
    model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
    return model, method, MethodProperties.batch(spec)  # type: ignore[return-value]


def test_allocation_rules_on_constructed_scores() -> None:
    # A, B: 10×10 matrices (LoRA r=1 costs 20; α=10 → LoRA at ≥ 2 entries); v: 10-vector (β=5 → full at ≥ 2)
    entries = [Entry("A", 100, 20), Entry("B", 100, 20), Entry("v", 10, None)]
    a, b, v = torch.zeros(10, 10), torch.zeros(10, 10), torch.zeros(10)
    a[0, :3] = 100.0  # A's 3 entries rank first
    b[4, 7] = 50.0
    v[2] = 10.0
    scores = {"A": a, "B": b, "v": v}
    tau, plan = allocate(scores, entries, 21, alpha=10, beta=5)  # τ=4: A LoRA (20) + B's one entry (1)
    assert tau == 4 and plan["A"].mode == "lora" and "v" not in plan
    assert plan["B"].mode == "sparse" and plan["B"].indices.tolist() == [47]
    _, plan = allocate(scores, entries, 22, alpha=10, beta=5)  # + v's one entry, sparse (1 < 10/5)
    assert plan["v"].mode == "sparse" and plan["v"].indices.tolist() == [2]
    with pytest.raises(ConfigError, match="exceeds"):
        allocate(scores, entries, 51, alpha=10, beta=5)  # max: 20 + 20 + 10


def test_sensitivity_is_summed_squared_gradient() -> None:
    model, method, batch = build()
    reference = copy.deepcopy(model)
    model.train(False), reference.train(False)
    for _ in range(2):
        model(**batch).loss.backward()
    assert all(p.grad is None for p in model.parameters()), "the sensitivity phase keeps no gradient"
    for p in reference.parameters():
        p.requires_grad_(True)
    reference(**batch).loss.backward()
    for name in ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.LayerNorm.bias"):
        torch.testing.assert_close(method.sums[name], 2 * reference.get_parameter(name).grad ** 2)
    assert not any("embeddings" in n or "classifier" in n for n in method.sums)


def test_only_selected_entries_change_and_count_is_near_budget() -> None:
    model, method, batch = build()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    model = sense(method, model, batch)
    assert abs(method.tuned_count() - 3000) <= 8 * 192  # within one tensor's cost of the target
    MethodProperties().train_steps(model, method, batch, 3)
    merged = method.merge(model).state_dict()
    assert merged.keys() == before.keys()
    for name, w in merged.items():
        changed = (w != before[name]).flatten()
        entry = method.plan.get(name)
        if entry is None:
            assert "classifier" in name or not changed.any(), f"{name} changed but was not selected"
        elif entry["mode"] == "sparse":
            assert changed.sum() > 0
            assert changed.sum() <= entry["count"]


def test_vit_fused_qkv_merge_is_exact() -> None:
    cfg = compose_config(["model=tiny_vit", "task=digits", "method=spt_lora", "method.budget=4000",
                          "method.sensitivity_batches=1"])
    spec, method, task = validate(cfg)
    torch.manual_seed(0)
    model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def loss_fn(m: nn.Module, _: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(m(x), y)

    model = method.sensitivity(model, itertools.repeat(None), loss_fn)
    qkv = next(e for e in method.entries if e.name == "blocks.0.attn.qkv.weight")
    assert (qkv.numel, qkv.lora) == (3 * 64 * 64, 8 * (64 + 3 * 64))  # fused qkv: one 3C×C matrix, LoRA r·4C
    assert method.plan, "nothing was selected"
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        got = method.merge(model)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_budget_calculator_reports_target_plus_head() -> None:
    budget = count(compose(["model=tiny_bert", "method=spt_lora", "method.budget=3000"]))
    assert budget.trainable == 3000 + 64 * 2 + 2
    with pytest.raises(ConfigError, match="exceeds the most"):
        count(compose(["model=tiny_bert", "method=spt_lora", "method.budget=10000000"]))
