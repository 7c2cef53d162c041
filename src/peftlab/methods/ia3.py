"""(IA)³ (Liu et al., 2022, arXiv 2205.05638) through HF ``peft``.

Learned vectors rescale activations: keys and values (l_k ⊙ K, l_v ⊙ V, one scale per output feature
of the k/v projections) and the input of the FFN's second layer (l_ff ⊙ γ(W₁x), one scale per input
feature of the ``down`` projection), all initialised to ones. peft realises both as a scale on the
target linear layer's output or input (``feedforward_modules``); merge folds the scales into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import peft

from peftlab.config_utils import PositiveFloat, require
from peftlab.methods import METHODS
from peftlab.methods.base import MethodConfig
from peftlab.methods.peft_wrapper import PeftMethod
from peftlab.models import ModelSpec


@dataclass
class IA3Config(MethodConfig):
    lr: PositiveFloat = 3e-3  # T-Few (the (IA)³ paper) trains with 3e-3
    targets: list[str] = field(default_factory=lambda: ["k", "v", "down"])
    feedforward: list[str] = field(default_factory=lambda: ["down"])  # targets scaled on their input side

    def __post_init__(self) -> None:
        super().__post_init__()
        stray = sorted(set(self.feedforward) - set(self.targets))
        require(not stray, f"method.feedforward {stray} must also be in method.targets {self.targets}")


@METHODS.register("ia3")
class IA3(PeftMethod):
    config_cls = IA3Config

    def peft_config(self, spec: ModelSpec, modules_to_save: list[str] | None) -> peft.IA3Config:
        c = self.config
        return peft.IA3Config(
            target_modules=spec.target_regex(c.targets),
            feedforward_modules=spec.target_regex(c.feedforward) if c.feedforward else [],
            modules_to_save=modules_to_save,
        )
