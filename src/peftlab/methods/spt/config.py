"""Options of SPT (He et al., ICCV 2023, arXiv 2303.08566); defaults from the official ziplab/SPT scripts."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftlab.config_utils import require
from peftlab.methods.base import MethodConfig


@dataclass
class SptConfig(MethodConfig):
    lr: float = 1e-3  # official: AdamW lr 1e-3, wd 1e-4
    targets: list[str] = field(default_factory=list)  # weight matrices ranked; [] = every Linear kind the model has
    vectors: bool = True  # also rank biases and norm weights (official: all non-head/cls/pos/patch_embed params)
    budget: int = 200_000  # target trainable params of the method (head excluded); paper trains 0.2M…1.0M on ViT-B
    sensitivity_batches: int = 16  # batches of summed grad² before the one-shot allocation (official 16)
    rank: int = 8  # LoRA rank of a structurally tuned matrix (official low_rank_dim 8)
    alpha: float = 10.0  # matrix → LoRA when #selected ≥ LoRA params / alpha (official α = 10)
    beta: float = 5.0  # vector fully tuned when #selected ≥ numel / beta (official β = 5)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.budget >= 1, f"method.budget (trainable parameters) must be >= 1, got {self.budget}")
        require(self.sensitivity_batches >= 1, f"method.sensitivity_batches must be >= 1, got "
                f"{self.sensitivity_batches}")
        require(self.rank >= 1, f"method.rank must be a positive integer, got {self.rank}")
        require(self.alpha > 0 and self.beta > 0, f"method.alpha and method.beta must be > 0, got {self.alpha}, "
                f"{self.beta}")
