"""A frozen ``nn.Linear`` plus a trainable additive update ΔW, the shape shared by sparse fine-tuning methods.

y = x (W₀ + ΔW)ᵀ + b, where W₀ and b keep their original parameter names (so the base model's state-dict
keys load unchanged), stay frozen and never get a ``.grad``. Subclasses say how ΔW is stored (S2FT: dense
rows/columns of W; SpIEL: indices + values) by implementing ``forward`` and :meth:`DeltaLinear.delta_weight`;
merging is the same for all of them: a plain ``nn.Linear`` holding W₀ + ΔW.
"""

from __future__ import annotations

import torch
from torch import nn


class DeltaLinear(nn.Module):
    """Base class: holds the frozen ``weight``/``bias`` of ``linear``; subclasses add the trainable update."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """ΔW as a dense ``(out, in)`` tensor."""
        raise NotImplementedError

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight W₀ + ΔW (zero inference overhead)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        merged = self.weight.detach() + self.delta_weight().to(self.weight.dtype)
        linear.weight = nn.Parameter(merged, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear


def merge_delta_linears(model: nn.Module) -> nn.Module:
    """Replace every :class:`DeltaLinear` of ``model`` by its merged ``nn.Linear``; returns ``model``."""
    names = [n for n, m in model.named_modules() if isinstance(m, DeltaLinear)]
    for name in names:
        model.set_submodule(name, model.get_submodule(name).to_linear())
    return model
