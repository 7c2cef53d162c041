"""Property matrix for full fine-tuning and LoRA (peft), plus equality with peft used directly."""

from __future__ import annotations

import peft
import torch
from torch import nn

from peftlab.methods.base import count_parameters, named_targets
from peftlab.models import ModelSpec
from tests.methods.properties import MethodProperties


class TestFullProperties(MethodProperties):
    method = "full"
    lr = 1e-3

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return count_parameters(model)[1]


class TestLoraProperties(MethodProperties):
    method = "lora"
    overrides = ["method.r=4", "method.targets=[q,v]"]
    trainable_regex = r".*(lora_[AB]\.default\.weight|classifier\.modules_to_save\.default\.(weight|bias))"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # LoRA: r·(d_in + d_out) per target linear; + classifier (hidden·labels + labels)
        r = 4
        targets = list(named_targets(model, spec, ["q", "v"]))  # peft LoRA layers (expose in/out_features)
        assert len(targets) == 2 * 2  # 2 layers × {query, value}
        lora = sum(r * (m.in_features + m.out_features) for _, m in targets)
        head = model.base_model.model.classifier.modules_to_save["default"]
        return lora + head.weight.numel() + head.bias.numel()

    def test_equals_peft_directly(self) -> None:
        model, _, spec, batch = self.build()
        torch.manual_seed(0)
        from peftlab.models import load_backbone

        base = load_backbone(spec, "seq_cls", 2)
        direct = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"],
                                                           modules_to_save=["classifier"]))
        direct.load_state_dict(model.state_dict())
        torch.testing.assert_close(self.outputs(direct, batch), self.outputs(model, batch), atol=0, rtol=0)
