"""SpIEL options; defaults are the official ``SftConfig`` defaults (AlanAnsell/peft, src/peft/tuners/sft/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftlab.config_utils import require
from peftlab.methods.base import MethodConfig

POLICIES = ("linear", "cosine")


@dataclass
class SpielConfig(MethodConfig):
    lr: float = 2e-4  # PEFT-range default (not taken from the paper's scripts)
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "up", "down"])  # + gate on LLaMA
    density: float = 0.01  # tunable weights = int(density · ALL model parameters), spread over the targets by size
    num_tunable_weights: int | None = None  # an exact total instead of density (official option; the budget knob)
    reselection_steps: int = 20  # optimizer steps between reselections
    selection_accumulation_steps: int = 5  # steps of candidate-gradient accumulation before a reselection
    initial_reselection_rate: float = 0.2  # fraction of deltas replaced at the second reselection (the first: all)
    reselection_rate_policy: str = "linear"  # linear: rate·(1 − t/T); cosine: rate·(1 + cos(πt/T))/2
    seed: int = 0  # seed of the random initial indices

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.density <= 1.0, f"method.density must be in (0, 1], got {self.density}")
        require(self.num_tunable_weights is None or self.num_tunable_weights >= 1,
                f"method.num_tunable_weights must be null or >= 1, got {self.num_tunable_weights}")
        require(self.reselection_steps >= 2, f"method.reselection_steps must be >= 2, got {self.reselection_steps}")
        require(1 <= self.selection_accumulation_steps < self.reselection_steps - 1,
                f"method.selection_accumulation_steps must be in [1, reselection_steps - 1) = "
                f"[1, {self.reselection_steps - 1}), got {self.selection_accumulation_steps}")
        require(0.0 <= self.initial_reselection_rate <= 1.0,
                f"method.initial_reselection_rate must be in [0, 1], got {self.initial_reselection_rate}")
        require(self.reselection_rate_policy in POLICIES,
                f"method.reselection_rate_policy must be one of {POLICIES}, got '{self.reselection_rate_policy}'")
