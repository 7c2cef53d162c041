"""DoRA, AdaLoRA, (IA)³ (through peft) and BitFit: property matrix, equality with peft used directly,
AdaLoRA's rank allocation and its total_step taken from the trainer."""

from __future__ import annotations

import copy
import re

import peft
import pytest
import torch
from torch import nn

from peftlab import global_state
from peftlab.methods.base import count_parameters
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import run
from tests.methods.properties import MethodProperties

HIDDEN, FFN, LAYERS, LABELS = 64, 128, 2, 2  # tiny_bert
HEAD = HIDDEN * LABELS + LABELS  # classifier weight + bias
PEFT_HEAD = r"classifier\.modules_to_save\.default\.(weight|bias)"


class TestDoraProperties(MethodProperties):
    method = "dora"
    overrides = ["method.r=4", "method.targets=[q,v]", "method.lr=1e-3"]
    trainable_regex = rf".*(lora_[AB]\.default\.weight|lora_magnitude_vector\.default\.weight|{PEFT_HEAD})"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # per target: LoRA r·(d_in + d_out) + magnitude d_out; q and v in each layer
        r = 4
        return LAYERS * 2 * (r * (HIDDEN + HIDDEN) + HIDDEN) + HEAD

    def test_equals_peft_directly(self) -> None:
        model, method, spec, batch = self.build()
        self.train_steps(model, method, batch, 2)  # non-trivial B and magnitude
        direct = peft.get_peft_model(load_backbone(spec, "seq_cls", LABELS), peft.LoraConfig(
            r=4, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"], use_dora=True))
        direct.load_state_dict(model.state_dict())
        torch.testing.assert_close(self.outputs(direct, batch), self.outputs(model, batch), atol=0, rtol=0)


class TestAdaLoraProperties(MethodProperties):
    method = "adalora"
    overrides = ["method.init_r=4", "method.target_r=2", "method.targets=[q,v]", "method.total_step=20"]
    trainable_regex = rf".*(lora_[ABE]\.default|{PEFT_HEAD})"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # per target: P (d_out·r) + Q (r·d_in) + Λ (r); ranknum is a frozen buffer-like parameter
        r = 4
        return LAYERS * 2 * (r * (HIDDEN + HIDDEN) + r) + HEAD

    def test_equals_peft_directly(self) -> None:
        model, method, spec, batch = self.build()
        self.train_steps(model, method, batch, 2)  # Λ starts at zero: make the update non-trivial
        direct = peft.get_peft_model(load_backbone(spec, "seq_cls", LABELS), peft.AdaLoraConfig(
            init_r=4, target_r=2, lora_alpha=32, orth_reg_weight=0.1, total_step=20, target_modules=["query", "value"],
            modules_to_save=["classifier"]))
        direct.load_state_dict(model.state_dict())
        torch.testing.assert_close(self.outputs(direct, batch), self.outputs(model, batch), atol=0, rtol=0)
        losses = []
        for m in (model, direct):
            m.train()
            torch.manual_seed(1)  # same dropout masks
            losses.append(m(**batch).loss)
        assert torch.equal(*losses)  # the same orthogonality regulariser is added in training mode

    def test_rank_allocation_reaches_budget_and_reloads(self) -> None:
        model, method, spec, batch = self.build()
        total, tinit, tfinal = 8, 2, 2
        method.config.total_step = None  # as in a run: the trainer supplies it
        method.config.tinit, method.config.tfinal = tinit, tfinal
        cfg = model.peft_config["default"]
        cfg.tinit, cfg.tfinal = tinit, tfinal
        method.on_fit_start(model, total)
        assert cfg.total_step == total
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        for step in range(1, total + 1):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
            method.on_train_batch_end(model, step)  # gradients still present, as in Lightning
        pattern = cfg.rank_pattern
        assert pattern is not None and len(pattern) == LAYERS * 2
        assert sum(sum(v) for v in pattern.values()) == 2 * len(pattern)  # average final rank = target_r
        kept = sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)
        assert kept == 2 * len(pattern)

        expected = self.outputs(model, batch)
        state, mstate = method.adapter_state_dict(model), copy.deepcopy(method.method_state())
        assert mstate["total_step"] == total
        fresh, fresh_method, _ = self.fresh()
        fresh = fresh_method.load_method_state(fresh, mstate)
        fresh = fresh_method.load_adapter_state_dict(fresh, state)
        assert count_parameters(fresh)[0] < count_parameters(model)[0]  # pruned to the rank pattern on load
        torch.testing.assert_close(self.outputs(fresh, batch), expected, atol=self.atol, rtol=0)


class TestIA3Properties(MethodProperties):
    method = "ia3"
    overrides = ["method.lr=1e-2"]
    trainable_regex = rf".*(ia3_l\.default|{PEFT_HEAD})"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # one scale per output feature of k and v, one per input feature of the FFN's second layer
        return LAYERS * (HIDDEN + HIDDEN + FFN) + HEAD


class TestBitFitProperties(MethodProperties):
    method = "bitfit"
    trainable_regex = r".*\.bias|classifier\.weight"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # per layer: q,k,v,o (4·h) + attention LayerNorm β (h) + FFN up (f) + FFN down (h) + output LayerNorm β (h);
        # + embedding LayerNorm β (h) + pooler dense (h); + the classifier (weight + bias)
        per_layer = 4 * HIDDEN + HIDDEN + FFN + HIDDEN + HIDDEN
        return LAYERS * per_layer + HIDDEN + HIDDEN + HEAD


def test_bitfit_without_layernorm_and_on_a_bias_free_model() -> None:
    from peftlab.errors import ConfigError
    from peftlab.train import validate
    from tests.conftest import compose_config

    spec, method, task = validate(compose_config(["model=tiny_bert", "method=bitfit", "method.layernorm=false"]))
    model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and not any(re.search("LayerNorm", n) for n in names)
    spec, method, task = validate(compose_config(["model=tiny_llama", "task=commonsense_synthetic", "method=bitfit"]))
    with pytest.raises(ConfigError, match="no bias terms"):
        method.apply(load_backbone(spec, task.head, task.num_labels), spec)


def test_adalora_total_step_comes_from_the_trainer(cfg_factory) -> None:
    # 32 examples / batch 16 × 2 epochs = 4 optimizer steps
    cfg = cfg_factory("method=adalora", "method.init_r=4", "method.target_r=2", "method.targets=[q,v]",
                      "task.num_train=32", "task.batch_size=16", "trainer.max_epochs=2", "task.num_validation=16",
                      "test=false")
    from peftlab.train import build

    module, datamodule, _ = build(cfg)
    import hydra

    with global_state.kept():  # the run's trainer (deterministic=True) changes process-wide switches
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
        trainer.fit(module, datamodule=datamodule)
    peft_cfg = module.model.peft_config["default"]
    assert peft_cfg.total_step == trainer.global_step == 4
    assert module.method.method_state()["total_step"] == 4


def test_adalora_rejects_an_impossible_schedule(cfg_factory) -> None:
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError, match="no budgeting phase"):
        run(cfg_factory("method=adalora", "method.tinit=5", "method.tfinal=5", "method.total_step=8"))
