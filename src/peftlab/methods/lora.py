"""LoRA (Hu et al., 2021, arXiv 2106.09685) through HF ``peft``: h = W₀x + (α/r)·B A x,
A ∈ R^{r×d_in} (Kaiming-uniform), B ∈ R^{d_out×r} (zeros), only A and B (and the head) train."""

from __future__ import annotations

from dataclasses import dataclass, field

import peft

from peftlab.config_utils import Dropout, PositiveFloat, PositiveInt
from peftlab.methods import METHODS
from peftlab.methods.base import MethodConfig
from peftlab.methods.peft_wrapper import PeftMethod
from peftlab.models import ModelSpec


@dataclass
class LoraConfig(MethodConfig):
    lr: PositiveFloat = 1e-3
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    r: PositiveInt = 8  # rank of the update
    alpha: PositiveFloat = 16.0  # scaling numerator: the update is multiplied by alpha / r
    dropout: Dropout = 0.0  # dropout on the LoRA branch input


@METHODS.register("lora")
class Lora(PeftMethod):
    config_cls = LoraConfig
    use_dora = False

    def peft_config(self, spec: ModelSpec, modules_to_save: list[str] | None) -> peft.LoraConfig:
        c = self.config
        return peft.LoraConfig(
            r=c.r,
            lora_alpha=c.alpha,
            lora_dropout=c.dropout,
            target_modules=spec.target_regex(c.targets),
            modules_to_save=modules_to_save,
            use_dora=self.use_dora,
        )
