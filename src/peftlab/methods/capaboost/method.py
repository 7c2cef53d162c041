"""CapaBoost methods: ``capaboost_lora`` and ``capaboost_adapter`` (Song et al., ICLR 2024, arXiv 2407.01320).

Both freeze the backbone, add one PEFT module per target whose weights are shared by ``d`` masked copies
(see ``layer.py`` for the equations, the cheap stacked form and the official update they reproduce), and
train only those shared weights (plus the task head when ``train_head``). Masks are drawn once from
``mask_seed`` (``masks.py``), kept as buffers and saved with the adapter state, so a reload is exact.

Two counts matter to a reader (:meth:`CapaBoostMethod.extra_counts`): the parameters *stored* and
optimised (equal to plain LoRA / adapters at the same rank / bottleneck) and those that can *receive
gradient*, the union of the d masks (expected fraction 1 − (1 − density)^d: 75% for d = 2, density 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftlab.config_utils import PositiveFloat, PositiveInt, require
from peftlab.methods import METHODS
from peftlab.methods.adapters.layer import BottleneckAdapter, adapter_modules, remove_adapters
from peftlab.methods.adapters.method import AdapterConfig, AdapterMethod
from peftlab.methods.base import Method, freeze, head_module_names, named_targets, unfreeze_head
from peftlab.methods.capaboost.config import CapaBoostConfig, CapaBoostLoraConfig
from peftlab.methods.capaboost.layer import FAN_IN, FAN_OUT, CapaBoostLoraLinear, MaskedTiedLinear
from peftlab.methods.capaboost.masks import draw_masks, union_fraction, weight_seed
from peftlab.models import ModelSpec

PLACEMENTS = {"pfeiffer": (["down"], "relu"), "houlsby": (["o", "down"], "swish")}  # AdapterHub defaults


def _head_parameters(model: nn.Module, spec: ModelSpec) -> int:
    return sum(p.numel() for n in head_module_names(model, spec) for p in model.get_submodule(n).parameters())


class CapaBoostMethod(Method):
    """What both variants share: masks from the seed, counts, exact save/load."""

    config_cls = CapaBoostConfig

    def masks(self, module_name: str, weight_name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The d masks (d, *shape) of one weight, a function of (mask_seed, module name, weight name) only."""
        c = self.config
        return draw_masks(shape, c.d, c.density, c.mask_pattern, weight_seed(c.mask_seed, module_name, weight_name))

    def extra_counts(self, model: nn.Module) -> dict[str, Any]:
        """Stored vs gradient-receiving parameter counts (both include the head and biases when they train)."""
        tied = [m for m in model.modules() if isinstance(m, MaskedTiedLinear)]
        tied_params = {id(m.weight) for m in tied}
        others = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in tied_params)
        stored = sum(m.weight.numel() for m in tied)
        fraction = union_fraction(self.config.density, self.config.d)
        if any(m.weight.is_meta for m in tied):  # budget calculator: shapes only, so the expected union
            return {"stored": stored + others, "receives_gradient_expected": others + round(stored * fraction),
                    "expected_union_fraction": fraction, "mask_seed": self.config.mask_seed}
        reached = sum(int(m.union_mask().sum()) for m in tied)
        return {
            "stored": stored + others,
            "receives_gradient": reached + others,
            "masked_weights": stored,
            "masked_weights_receiving_gradient": reached,
            "expected_union_fraction": fraction,
            "mask_seed": self.config.mask_seed,
        }

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Trainable tensors plus the masks, so a reload reproduces outputs whatever the reloading seed."""
        state = super().adapter_state_dict(model)
        state.update({n: b.detach().clone() for n, b in model.named_buffers() if n.endswith(".mask")})
        return state

    def method_state(self) -> dict[str, Any]:
        c = self.config
        return {"mask_seed": c.mask_seed, "d": c.d, "density": c.density, "mask_pattern": c.mask_pattern}

    def load_method_state(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        mismatched = {k: v for k, v in state.items() if k != "mask_seed" and v != self.method_state()[k]}
        require(not mismatched, f"checkpoint was trained with CapaBoost {mismatched}; set the same method options")
        return model


@METHODS.register("capaboost_lora")
class CapaBoostLora(CapaBoostMethod):
    """h = W₀x + (α/r)·Σᵢ (B ⊙ M_iᴮ)(A ⊙ M_iᴬ) x on every target linear layer; mergeable."""

    config_cls = CapaBoostLoraConfig

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        c = self.config
        freeze(model)
        for name, module in list(named_targets(model, spec, c.targets)):
            require(isinstance(module, nn.Linear), f"capaboost_lora needs nn.Linear targets; '{name}' is a "
                    f"{type(module).__name__} (check method.targets / conf/model/{spec.name}.yaml)")
            masks_a = self.masks(name, "A", (c.r, module.in_features))
            masks_b = self.masks(name, "B", (module.out_features, c.r))
            model.set_submodule(name, CapaBoostLoraLinear(module, c.r, c.alpha, masks_a, masks_b, c.dropout))
        if c.train_head:
            unfreeze_head(model, spec)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        """Every CapaBoost layer folded into its base linear layer: the base model's architecture and cost."""
        for name, module in list(model.named_modules()):
            if isinstance(module, CapaBoostLoraLinear):
                model.set_submodule(name, module.merged())
        return model

    def planned_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        """Stored trainable parameters before applying (works on a meta-device model): r·(d_in + d_out) per
        target, the same as plain LoRA, plus the head."""
        c = self.config
        lora = sum(c.r * (m.in_features + m.out_features) for _, m in named_targets(model, spec, c.targets))
        return lora + (_head_parameters(model, spec) if c.train_head else 0)


@dataclass
class CapaBoostAdapterConfig(CapaBoostConfig, AdapterConfig):
    """h = x + Σᵢ (U ⊙ M_iᵁ) f((D ⊙ M_iᴰ) x + b_D) + b_U after the placement's modules."""

    lr: PositiveFloat = 5e-4  # official PAdapter GLUE script
    placement: str = "pfeiffer"  # pfeiffer: after the FFN; houlsby: after attention output and FFN; custom: targets
    targets: list[str] = field(default_factory=list)  # empty: the placement's; set only with placement=custom
    bottleneck: PositiveInt | None = 32  # official GLUE/SQuAD PAdapter: reduction factor 24 on 768 → 32
    activation: str | None = None  # None: the placement's (pfeiffer relu, houlsby swish, as AdapterHub)
    init_std: PositiveFloat = 2e-2  # the official code's BERT init std (ours truncated at 2 std, the baselines' init)

    def __post_init__(self) -> None:
        require(self.placement in (*PLACEMENTS, "custom"),
                f"method.placement must be one of {[*PLACEMENTS, 'custom']}, got '{self.placement}'")
        if self.placement == "custom":
            require(bool(self.targets), "method.placement=custom needs method.targets (logical names)")
            self.activation = self.activation or "relu"
        else:
            targets, activation = PLACEMENTS[self.placement]
            require(not self.targets or list(self.targets) == targets,
                    f"method.placement={self.placement} adapts {targets}; leave method.targets empty "
                    f"or use method.placement=custom (got {list(self.targets)})")
            self.targets = list(targets)
            self.activation = self.activation or activation
        super().__post_init__()


@METHODS.register("capaboost_adapter")
class CapaBoostAdapter(CapaBoostMethod, AdapterMethod):
    """Bottleneck adapters (the baselines' :class:`BottleneckAdapter`) whose down/up weights are shared by d
    masked copies; biases are not masked. Adapters are non-linear: no merge."""

    config_cls = CapaBoostAdapterConfig

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        model = AdapterMethod.apply(self, model, spec)
        for name, adapter in adapter_modules(model).items():
            down, up = adapter.down, adapter.up
            adapter.down = MaskedTiedLinear(down.weight, down.bias, self.masks(name, "down", down.weight.shape),
                                            FAN_OUT)
            adapter.up = MaskedTiedLinear(up.weight, up.bias, self.masks(name, "up", up.weight.shape), FAN_IN)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError("capaboost_adapter is non-linear and cannot merge into the base weights "
                                  "(use capaboost_lora for a mergeable update)")

    def unload(self, model: nn.Module) -> nn.Module:
        """The base model back (adapters removed)."""
        return remove_adapters(model)

    def planned_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        """Stored trainable parameters before applying: 2·d·m + m + d per adapter (as plain adapters) + head."""
        c = self.config
        sizes = [int(m.out_features) for _, m in named_targets(model, spec, c.targets)]
        adapters = sum(BottleneckAdapter.num_parameters(dim, c.bottleneck_size(dim)) for dim in sizes)
        return adapters + (_head_parameters(model, spec) if c.train_head else 0)
