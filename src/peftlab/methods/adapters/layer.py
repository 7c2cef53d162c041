"""Bottleneck adapter layer (Houlsby et al., 2019, arXiv 1902.00751) and its insertion into a backbone.

An adapter maps the output h ∈ R^d of a sub-layer to

    h ↦ h + W_up · f(W_down · h + b_down) + b_up,        W_down ∈ R^{m×d}, W_up ∈ R^{d×m}, m ≪ d

(Houlsby et al., Sec. 2.1, Fig. 2). It holds 2·d·m + m + d parameters. ``down`` and ``up`` are plain
``nn.Linear`` attributes so that other methods (CapaBoost's masked copies) can wrap or mask them.

Insertion wraps a backbone module (e.g. BERT's ``attention.output.dense`` or LLaMA's ``mlp.down_proj``)
in :class:`AdaptedModule`, whose output is ``adapter(base_layer(x))``. Where this departs from the
AdapterHub code (adapter-transformers, which the AdaLoRA and CapaBoost baselines use): there the adapter
sits after the sub-layer's dropout, here before it (the wrapped projection is the last module every
architecture has in common); in eval mode both are the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN

from peftlab.config_utils import require
from peftlab.methods.base import named_targets
from peftlab.models import ModelSpec

INITS = ("houlsby", "lora")


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))``: a residual two-layer bottleneck on the last dimension of ``h``.

    Args:
        dim: size d of the hidden states the adapter reads and writes.
        bottleneck: size m of the bottleneck.
        activation: a name of ``transformers.activations.ACT2FN`` (``relu``, ``silu``/``swish``, ``gelu``...).
        init: ``houlsby`` — every weight N(0, init_std²) truncated at 2 std, biases 0: a near-identity map
            (Houlsby et al., Sec. 3.6); ``lora`` — ``down`` Kaiming-uniform, ``up`` zeros: exactly the identity
            at step 0 (the "mam"/LoRA-style init of adapter-transformers).
        init_std: the standard deviation of the ``houlsby`` init.

    Raises:
        ConfigError: on a non-positive size, an unknown activation or init.
    """

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", init: str = "houlsby",
                 init_std: float = 1e-2) -> None:
        super().__init__()
        require(dim > 0 and bottleneck > 0, f"adapter sizes must be positive, got dim={dim}, bottleneck={bottleneck}")
        require(activation in ACT2FN, f"unknown adapter activation '{activation}'; valid: {sorted(ACT2FN)}")
        require(init in INITS, f"unknown adapter init '{init}'; valid: {INITS}")
        self.down = nn.Linear(dim, bottleneck)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(bottleneck, dim)
        self.reset_parameters(init, init_std)

    @torch.no_grad()
    def reset_parameters(self, init: str = "houlsby", init_std: float = 1e-2) -> None:
        if init == "houlsby":
            for linear in (self.down, self.up):
                nn.init.trunc_normal_(linear.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        else:
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)

    def delta(self, hidden: torch.Tensor) -> torch.Tensor:
        """The adapter's update ``up(act(down(h)))`` (without the residual)."""
        return self.up(self.act(self.down(hidden)))  # (..., d) -> (..., m) -> (..., d)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.delta(hidden)

    @staticmethod
    def num_parameters(dim: int, bottleneck: int) -> int:
        """2·d·m + m + d: the weights and biases of ``down`` and ``up``."""
        return 2 * dim * bottleneck + bottleneck + dim


class AdaptedModule(nn.Module):
    """``adapter(base_layer(x))``: a backbone module followed by an adapter on its output.

    ``base_layer`` keeps the original module (the name peft uses for wrapped layers), so its parameters
    stay addressable and frozen; the adapter's parameters are ``<name>.adapter.{down,up}.{weight,bias}``.
    """

    def __init__(self, base_layer: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.adapter(self.base_layer(*args, **kwargs))


AdapterFactory = Callable[[int], nn.Module]  # output size of the wrapped module -> adapter


def output_size(module: nn.Module, name: str) -> int:
    """The size of the last dimension ``module`` outputs (``out_features`` of a linear layer)."""
    size = getattr(module, "out_features", None)
    require(isinstance(size, int), f"cannot place an adapter after '{name}' ({type(module).__name__}): "
            f"it has no out_features; point the adapter targets at linear layers")
    return int(size)


def insert_adapters(model: nn.Module, spec: ModelSpec, targets: list[str], factory: AdapterFactory) -> list[str]:
    """Wrap every module matching the logical ``targets`` of ``spec`` in an :class:`AdaptedModule`.

    ``factory(d)`` builds the adapter for a module whose outputs have size d (CapaBoost passes a factory of
    masked adapters). Returns the names of the wrapped modules.

    Raises:
        ConfigError: when a target matches no module, or a module that is not linear-like.
    """
    require(not adapter_modules(model), "the model already holds adapters: apply an adapter method once")
    found = list(named_targets(model, spec, targets))
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, AdaptedModule(module, factory(output_size(module, name))))
    return [name for name, _ in found]


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{wrapped module name: adapter}`` for every :class:`AdaptedModule` in ``model``."""
    return {name: m.adapter for name, m in model.named_modules() if isinstance(m, AdaptedModule)}


def remove_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`insert_adapters`: every :class:`AdaptedModule` replaced by its ``base_layer``."""
    for name in list(adapter_modules(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, getattr(parent, child).base_layer)
    return model
