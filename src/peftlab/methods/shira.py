"""SHiRA — Sparse High Rank Adapters (Bhardwaj et al., NeurIPS 2024, arXiv 2406.13175) through HF ``peft``.

W = W₀ + S, where S is non-zero only on a fixed sparse support M of each target weight (|M| = r·(d_in + d_out)
entries, LoRA-r's parameter count, so budgets match LoRA at the same r; S is high-rank). Only the values on M
train (``shira_weight``, zero-initialised, so training starts from W₀); merge adds S into W₀ (no inference
overhead), and adapters switch by scattering a sparse set of values.

Mask: SHiRA-Rand, a uniformly random support (peft's ``mask_type="random"``). Departure: peft's
``random_mask`` re-seeds a fresh generator for every layer, so every layer of the same shape gets the same
support; our ``mask_fn`` draws the supports in turn from one generator seeded by ``mask_seed`` (the run seed),
so layers get independent supports, still reproducible (layers are built in module order) and saved with the
adapter (``shira_indices``). peft trains S by materialising W₀ + S each step (no memory saving over LoRA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import peft
import torch
from torch import nn

from peftlab.config_utils import PositiveFloat, PositiveInt, require
from peftlab.methods import METHODS
from peftlab.methods.base import MethodConfig, named_targets
from peftlab.methods.peft_wrapper import PeftMethod
from peftlab.models import ModelSpec


@dataclass
class ShiraConfig(MethodConfig):
    lr: PositiveFloat = 1e-3  # not from the paper: LoRA's lr here (the support starts at zero like LoRA's B)
    targets: list[str] = field(default_factory=lambda: ["q", "v"])  # LoRA's default targets: budgets match
    r: PositiveInt = 8  # |support| = r·(d_in + d_out) per target, LoRA-r's count (not a rank limit)
    mask_seed: int = 0  # seeds the random supports; conf/method/shira.yaml sets it to the run seed


def independent_random_masks(seed: int) -> Callable[..., torch.Tensor]:
    """A peft ``mask_fn``: each call draws a uniformly random support of r·(d_in + d_out) entries from one
    shared generator (see module docstring). The mask is built on the CPU and returned there for a meta-device
    weight (the budget calculator), else on the weight's device, as peft's ``random_mask`` does."""
    generator = torch.Generator().manual_seed(seed)

    def mask_fn(base_layer: nn.Module, r: int, **kwargs: object) -> torch.Tensor:
        weight = base_layer.weight
        out_features, in_features = weight.shape
        chosen = torch.randperm(weight.numel(), generator=generator, device="cpu")[: r * (in_features + out_features)]
        mask = torch.zeros(weight.numel(), dtype=torch.bool, device="cpu")
        mask[chosen] = True
        return mask.view(out_features, in_features).to("cpu" if weight.is_meta else weight.device)

    return mask_fn


@METHODS.register("shira")
class Shira(PeftMethod):
    config_cls = ShiraConfig

    def peft_config(self, spec: ModelSpec, modules_to_save: list[str] | None) -> peft.ShiraConfig:
        c = self.config
        config = peft.ShiraConfig(r=c.r, mask_type="random", target_modules=spec.target_regex(c.targets),
                                  modules_to_save=modules_to_save)
        config.mask_fn = independent_random_masks(c.mask_seed)
        return config

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        r = self.config.r
        too_small = [n for n, m in named_targets(model, spec, self.config.targets)
                     if isinstance(m, nn.Linear) and r * (m.in_features + m.out_features) > m.weight.numel()]
        require(not too_small, f"method.r={self.config.r} asks for more SHiRA entries r·(d_in + d_out) than "
                f"{too_small[:3]} hold; lower method.r")
        return super().apply(model, spec)
