"""Super-Tuning through HF ``peft`` (``peft.SupertuningConfig``; paper arXiv 2607.09287 as cited by peft 0.21.2).

W = W₀ + scatter(I, v): the base weight stays frozen and only the scalar entries on a fixed support I train,
I = the top-k entries of |W₀| per target (k = int(numel·(1 − sparsity)); ``select_top: false`` keeps the
smallest instead — the paper's "-bottom" variants). Selection is data-free (no calibration pass); values
start at zero, so training starts from W₀. With ``r`` set, a LoRA branch (α/r)·BA is added on top (the
paper's "Supra" hybrid). Merge adds the update into W₀. Everything here is peft's; we only map options.
Departure from peft's defaults: targets are our LoRA default (q, v) instead of peft's per-architecture list,
so budgets compare with LoRA on the same matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import peft

from peftlab.config_utils import Dropout, PositiveFloat, PositiveInt, require
from peftlab.methods import METHODS
from peftlab.methods.base import MethodConfig
from peftlab.methods.peft_wrapper import PeftMethod
from peftlab.models import ModelSpec


@dataclass
class SupertuningConfig(MethodConfig):
    lr: PositiveFloat = 1e-3  # not from the paper: LoRA's lr here
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    sparsity: Dropout = 0.99  # peft default: 1% of each target's entries train
    select_top: bool = True  # largest |W₀| entries (Super/Supra); false: the smallest ("-bottom")
    r: PositiveInt | None = None  # LoRA rank of the Supra hybrid; None: sparse support only (Super)
    alpha: PositiveFloat | None = None  # Supra LoRA scaling numerator (None: 2·r, peft's default)
    dropout: Dropout = 0.0  # Supra LoRA dropout

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha is None or self.r is not None, "method.alpha is set but method.r is null (Super mode)")


@METHODS.register("supertuning")
class Supertuning(PeftMethod):
    config_cls = SupertuningConfig

    def peft_config(self, spec: ModelSpec, modules_to_save: list[str] | None) -> peft.SupertuningConfig:
        c = self.config
        return peft.SupertuningConfig(target_modules=spec.target_regex(c.targets), modules_to_save=modules_to_save,
                                      sparsity=c.sparsity, select_top=c.select_top, r=c.r, lora_alpha=c.alpha,
                                      lora_dropout=c.dropout)
