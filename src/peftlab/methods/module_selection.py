"""Which modules of a backbone a method touches: logical Linear targets a model defines, and its norms.

Shared by SSF and SPT, whose empty ``targets`` default means "every Linear kind the model has" (ViT's fused
``qkv`` or BERT's separate ``q``/``k``/``v``), so one method config serves timm ViTs, BERT and LLaMA.
"""

from __future__ import annotations

from torch import nn

from peftlab.config_utils import require
from peftlab.methods.base import named_targets
from peftlab.models import ModelSpec

LINEAR_KINDS = ("q", "k", "v", "qkv", "o", "gate", "up", "down")  # logical names of conf/model/*.yaml


def target_linears(model: nn.Module, spec: ModelSpec, targets: list[str]) -> dict[str, nn.Linear]:
    """Name → Linear for the logical ``targets``; empty ``targets`` = every Linear kind the model defines."""
    present = list(targets) or [t for t in LINEAR_KINDS if t in spec.targets]
    require(bool(present), f"model '{spec.name}' defines none of the Linear kinds {list(LINEAR_KINDS)}")
    found = dict(named_targets(model, spec, present))
    not_linear = [n for n, m in found.items() if not isinstance(m, nn.Linear)]
    require(not not_linear, f"targets must be nn.Linear modules; {not_linear[:3]} are not")
    return found  # type: ignore[return-value]


def is_norm(module: nn.Module) -> bool:
    """LayerNorm (BERT, ViT) or an RMSNorm (LLaMA's ``LlamaRMSNorm``, torch's ``nn.RMSNorm``)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def norm_modules(model: nn.Module, spec: ModelSpec) -> dict[str, nn.Module]:
    """Every norm outside the task head, in module order."""
    return {n: m for n, m in model.named_modules()
            if is_norm(m) and not any(spec.is_head(p) for p in _prefixes(n))}


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
