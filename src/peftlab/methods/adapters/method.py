"""Houlsby (HAdapter) and Pfeiffer (PAdapter) bottleneck adapters: the baselines of AdaLoRA and CapaBoost.

- Houlsby et al. 2019 (arXiv 1902.00751): an adapter after the attention output projection and one after
  the FFN output projection of every layer (``targets: [o, down]``).
- Pfeiffer et al. 2021 (AdapterFusion, arXiv 2005.00247): one adapter per layer, after the FFN only
  (``targets: [down]``). The AdaLoRA paper (App. and Table 1) compares HAdapter d = 32/16/8 with
  PAdapter d = 64/32/16 at matched budgets (1.2M/0.6M/0.3M on DeBERTaV3-base).

The backbone is frozen; only the adapters (and the task head when ``train_head``) train.
Departures, stated once: adapters wrap the output projection (before the sub-layer's dropout, residual
and LayerNorm), for every architecture alike; Houlsby's trained LayerNorms and Pfeiffer's extra
LayerNorm-before-adapter placement of AdapterHub are not reproduced (they change <0.1% of the budget,
not the method). Adapters are non-linear, so there is no merge into the base weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from transformers.activations import ACT2FN

from peftlab.config_utils import PositiveFloat, PositiveInt, require
from peftlab.methods import METHODS
from peftlab.methods.adapters.layer import INITS, BottleneckAdapter, insert_adapters
from peftlab.methods.base import Method, MethodConfig, freeze, unfreeze_head
from peftlab.models import ModelSpec


@dataclass
class AdapterConfig(MethodConfig):
    lr: PositiveFloat = 5e-4  # CapaBoost's PAdapter GLUE script; AdaLoRA tunes baselines in {8e-5 ... 1e-3}
    targets: list[str] = field(default_factory=lambda: ["o", "down"])  # modules whose output is adapted
    bottleneck: PositiveInt | None = 32  # bottleneck size m
    reduction_factor: PositiveInt | None = None  # instead of bottleneck: m = d // reduction_factor (AdapterHub style)
    activation: str = "relu"  # name in transformers' ACT2FN
    init: str = "houlsby"  # houlsby: N(0, init_std^2) near-identity; lora: up = 0 (exact identity at step 0)
    init_std: PositiveFloat = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        require((self.bottleneck is None) != (self.reduction_factor is None),
                "set exactly one of method.bottleneck and method.reduction_factor (the other to null)")
        require(self.activation in ACT2FN, f"unknown method.activation '{self.activation}'; valid: {sorted(ACT2FN)}")
        require(self.init in INITS, f"method.init must be one of {INITS}, got '{self.init}'")

    def bottleneck_size(self, dim: int) -> int:
        """m for an adapter on hidden size ``dim``."""
        if self.bottleneck is not None:
            return self.bottleneck
        size = dim // self.reduction_factor
        require(size > 0, f"method.reduction_factor={self.reduction_factor} leaves no bottleneck for size {dim}")
        return size


@dataclass
class HoulsbyConfig(AdapterConfig):
    activation: str = "swish"  # AdapterHub's HoulsbyConfig non-linearity


@dataclass
class PfeifferConfig(AdapterConfig):
    targets: list[str] = field(default_factory=lambda: ["down"])
    bottleneck: PositiveInt | None = 64  # AdaLoRA Table 1: PAdapter d=64 ~ HAdapter d=32 ~ LoRA r=8 budget


class AdapterMethod(Method):
    """Freeze the backbone, wrap the target modules in adapters, optionally train the head.

    Subclasses (e.g. CapaBoost's masked adapters) override :meth:`make_adapter` only.
    """

    config_cls = AdapterConfig

    def make_adapter(self, dim: int) -> nn.Module:
        c = self.config
        return BottleneckAdapter(dim, c.bottleneck_size(dim), c.activation, c.init, c.init_std)

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        freeze(model)
        insert_adapters(model, spec, self.config.targets, self.make_adapter)  # new modules: trainable
        if self.config.train_head:
            unfreeze_head(model, spec)
        return model


@METHODS.register("adapter_houlsby")
class HoulsbyAdapter(AdapterMethod):
    config_cls = HoulsbyConfig


@METHODS.register("adapter_pfeiffer")
class PfeifferAdapter(AdapterMethod):
    config_cls = PfeifferConfig
