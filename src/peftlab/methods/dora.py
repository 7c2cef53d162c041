"""DoRA (Liu et al., 2024, arXiv 2402.09353) through HF ``peft`` (``LoraConfig(use_dora=True)``).

Eq. (5) of the paper: W' = m · (W₀ + (α/r)·B A) / ‖W₀ + (α/r)·B A‖_c — LoRA's low-rank update on the
direction, plus a trainable magnitude vector m ∈ R^{d_out} (column norms of W₀ at init), so a DoRA
target holds r·(d_in + d_out) + d_out parameters. Same options as LoRA; nothing here changes peft.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftlab.config_utils import PositiveFloat
from peftlab.methods import METHODS
from peftlab.methods.lora import Lora, LoraConfig


@dataclass
class DoraConfig(LoraConfig):
    lr: PositiveFloat = 2e-4  # DoRA commonsense scripts (LLaMA-7B/LLaMA2-7B; 1e-4 for LLaMA3-8B)
    targets: list[str] = field(default_factory=lambda: ["q", "v"])


@METHODS.register("dora")
class Dora(Lora):
    config_cls = DoraConfig
    use_dora = True
