"""SpIEL options; defaults are the official ``SftConfig`` defaults (AlanAnsell/peft, src/peft/tuners/sft/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from peftlab.config_utils import Density, PositiveFloat, PositiveInt, Range, UnitInterval, require
from peftlab.methods.base import MethodConfig

POLICIES = ("linear", "cosine")


@dataclass
class SpielConfig(MethodConfig):
    lr: PositiveFloat = 2e-4  # PEFT-range default (not taken from the paper's scripts)
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "up", "down"])  # + gate on LLaMA
    density: Density = 0.01  # tunable weights = int(density · ALL model parameters), spread over targets by size
    num_tunable_weights: PositiveInt | None = None  # an exact total instead of density (official option; budget knob)
    reselection_steps: Annotated[int, Range(2)] = 20  # optimizer steps between reselections
    selection_accumulation_steps: PositiveInt = 5  # steps of candidate-gradient accumulation before a reselection
    initial_reselection_rate: UnitInterval = 0.2  # fraction of deltas replaced at the 2nd reselection (the 1st: all)
    reselection_rate_policy: str = "linear"  # linear: rate·(1 − t/T); cosine: rate·(1 + cos(πt/T))/2
    seed: int = 0  # seed of the random initial indices

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.selection_accumulation_steps < self.reselection_steps - 1,
                f"method.selection_accumulation_steps must be in [1, reselection_steps - 1) = "
                f"[1, {self.reselection_steps - 1}), got {self.selection_accumulation_steps}")
        require(self.reselection_rate_policy in POLICIES,
                f"method.reselection_rate_policy must be one of {POLICIES}, got '{self.reselection_rate_policy}'")
