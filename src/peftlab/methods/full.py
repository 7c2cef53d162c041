"""Full fine-tuning: every parameter trains. The reference point for memory and accuracy."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.config_utils import PositiveFloat
from peftlab.methods import METHODS
from peftlab.methods.base import Method, MethodConfig
from peftlab.models import ModelSpec


@dataclass
class FullConfig(MethodConfig):
    lr: PositiveFloat = 2e-5


@METHODS.register("full")
class FullFineTuning(Method):
    config_cls = FullConfig

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model
