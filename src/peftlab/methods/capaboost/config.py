"""Configs of CapaBoost (Song et al., ICLR 2024, arXiv 2407.01320): the options both variants share,
and those of the LoRA variant. Defaults follow the released code (d = 2, density 0.5, LoRA r 8, α 16 on q, v)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftlab.config_utils import Density, Dropout, PositiveFloat, PositiveInt, require
from peftlab.methods.base import MethodConfig
from peftlab.methods.capaboost.masks import parse_pattern


@dataclass
class CapaBoostConfig(MethodConfig):
    """Mask options shared by ``capaboost_lora`` and ``capaboost_adapter``."""

    d: PositiveInt = 2  # parallel masked copies of the one shared weight (official `num_layer`, default 2)
    density: Density = 0.5  # fraction of each weight every copy's mask keeps (exact count per copy)
    mask_pattern: str = "random"  # "random" (exact-count unstructured, official default) or "N:M", e.g. "2:4"
    mask_seed: int = 0  # seeds the masks; conf/method/capaboost_*.yaml sets it to the run seed

    def __post_init__(self) -> None:
        super().__post_init__()
        nm = parse_pattern(self.mask_pattern)
        if nm is not None:
            require(
                abs(self.density - nm[0] / nm[1]) < 1e-12,
                f"method.mask_pattern '{self.mask_pattern}' keeps {nm[0]}/{nm[1]} of each weight: "
                f"set method.density={nm[0] / nm[1]:g} (got {self.density})",
            )


@dataclass
class CapaBoostLoraConfig(CapaBoostConfig):
    """h = W₀x + (α/r)·Σᵢ (B ⊙ M_iᴮ)(A ⊙ M_iᴬ) x."""

    lr: PositiveFloat = 1e-3
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    r: PositiveInt = 8  # rank of the shared A (r × d_in) and B (d_out × r)
    alpha: PositiveFloat = 16.0  # the update is scaled by alpha / r, as in LoRA (no 1/d: the copies are summed)
    dropout: Dropout = 0.0  # dropout on the branch input, drawn independently for every copy (as the official code)
