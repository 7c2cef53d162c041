"""Options of SPT (He et al., ICCV 2023, arXiv 2303.08566); defaults from the official ziplab/SPT scripts."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftlab.config_utils import PositiveFloat, PositiveInt
from peftlab.methods.base import MethodConfig


@dataclass
class SptConfig(MethodConfig):
    lr: PositiveFloat = 1e-3  # official: AdamW lr 1e-3, wd 1e-4
    targets: list[str] = field(default_factory=list)  # weight matrices ranked; [] = every Linear kind the model has
    vectors: bool = True  # also rank biases and norm weights (official: all non-head/cls/pos/patch_embed params)
    budget: PositiveInt = 200_000  # target trainable params of the method (head excluded); paper: 0.2M…1.0M on ViT-B
    sensitivity_batches: PositiveInt = 16  # batches of summed grad² before the one-shot allocation (official 16)
    rank: PositiveInt = 8  # LoRA rank of a structurally tuned matrix (official low_rank_dim 8)
    alpha: PositiveFloat = 10.0  # matrix → LoRA when #selected ≥ LoRA params / alpha (official α = 10)
    beta: PositiveFloat = 5.0  # vector fully tuned when #selected ≥ numel / beta (official β = 5)
    init_seed: int = 0  # seeds each LoRA A with the tensor's name; conf/method/spt_lora.yaml sets it to the run seed
