"""BitFit (Ben Zaken et al., 2022, arXiv 2106.10199): train only the bias terms (and the task head).

The paper (Sec. 2) trains every bias vector of the encoder — query/key/value, attention output, both
FFN layers and the LayerNorms' β — and the classifier. ``layernorm: false`` keeps LayerNorm biases
frozen. peft has no BitFit tuner (its ``bias="all"`` option only adds biases to another method), so it
is written here: no module changes, so merge is the identity and the checkpoint is the bias vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.config_utils import PositiveFloat, require
from peftlab.methods import METHODS
from peftlab.methods.base import Method, MethodConfig, freeze, unfreeze_head
from peftlab.models import ModelSpec


@dataclass
class BitFitConfig(MethodConfig):
    lr: PositiveFloat = 1e-3  # BitFit paper: lr in {1e-4, 4e-4, 7e-4, 1e-3}
    layernorm: bool = True  # also train the LayerNorm biases (the paper does)


def bias_parameters(model: nn.Module, layernorm: bool) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` bias terms BitFit trains."""
    found = []
    for module_name, module in model.named_modules():
        if not layernorm and isinstance(module, nn.LayerNorm):
            continue
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            found.append((f"{module_name}.bias", bias))
    return found


@METHODS.register("bitfit")
class BitFit(Method):
    config_cls = BitFitConfig

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        freeze(model)
        biases = bias_parameters(model, self.config.layernorm)
        require(bool(biases), f"model '{spec.name}' has no bias terms: BitFit has nothing to train "
                "(LLaMA-style models have none)")
        for _, p in biases:
            p.requires_grad_(True)
        if self.config.train_head:
            unfreeze_head(model, spec)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model  # the trained biases are the model's own
