"""SSF — Scaling & Shifting your Features (Lian et al., NeurIPS 2022, arXiv 2210.08823; code dongzelian/SSF).

Equation (paper Eq. 1): after an operation with output ``x`` (channels last), ``y = γ ⊙ x + β`` with one
learnable scale γ and shift β per output channel, γ ~ N(1, 0.02²) and β ~ N(0, 0.02²) (official
``init_ssf_scale_shift``). Only γ, β and the task head train (official ``optim_factory.py`` freezes all
other parameters). Because the affine follows a linear operation, it folds into it after training
(paper Eq. 3-4): ``W' = diag(γ) W``, ``b' = γ ⊙ b + β`` — zero inference overhead (:meth:`Ssf.merge`).

Where (official ``models/vision_transformer.py``): after the fused ``qkv`` Linear (3C channels), the
attention ``proj``, MLP ``fc1`` (4C) and ``fc2``, after ``norm1``/``norm2``, after the patch embedding and
after the final norm. Here: after every Linear of the logical ``targets`` the model defines (ViT: qkv, o,
up, down; BERT/LLaMA: q, k, v, o, (gate,) up, down), after every LayerNorm/RMSNorm outside the head
(``norms``; ViT's norm1, norm2, final norm — BERT's embedding/attention/output LayerNorms), and after a
timm ``patch_embed.proj`` convolution (``patch_embed``; per output channel, equal to the official
per-channel affine on the flattened tokens).

Departures: for BERT and LLaMA (the paper only has vision models) SSF goes after the same kinds of
Linear/norm modules. Merge on bias-free modules (LLaMA's Linears) adds a bias vector to hold β; an
RMSNorm has no bias at all, so merge refuses when the shift after one is non-zero (use ``norms=false`` on
LLaMA if you need merging).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.config_utils import NonNegativeFloat, PositiveFloat, require
from peftlab.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.methods.base import Method, MethodConfig, freeze, unfreeze_head
from peftlab.methods.module_selection import norm_modules, target_linears
from peftlab.models import ModelSpec


@dataclass
class SsfConfig(MethodConfig):
    lr: PositiveFloat = 5e-3  # official VTAB scripts: per-task lr in 1e-3…5e-2 (CIFAR-100: 5e-3)
    targets: list[str] = field(default_factory=list)  # Linear kinds followed by SSF; [] = all the model defines
    norms: bool = True  # after every LayerNorm/RMSNorm outside the head (ViT norm1, norm2, final norm)
    patch_embed: bool = True  # after a timm ViT's patch_embed.proj convolution (ignored by other models)
    init_std: NonNegativeFloat = 0.02  # γ ~ N(1, std²), β ~ N(0, std²) (official init_ssf_scale_shift)


class ScaleShift(nn.Module):
    """``base`` followed by a per-output-channel affine ``γ ⊙ base(x) + β`` (channel dim 1 for a Conv2d)."""

    def __init__(self, base: nn.Module, channels: int, init_std: float) -> None:
        super().__init__()
        self.base = base
        ref = next(base.parameters())
        self.ssf_scale = nn.Parameter(torch.empty(channels, device=ref.device, dtype=ref.dtype))
        self.ssf_shift = nn.Parameter(torch.empty(channels, device=ref.device, dtype=ref.dtype))
        nn.init.normal_(self.ssf_scale, mean=1.0, std=init_std)
        nn.init.normal_(self.ssf_shift, mean=0.0, std=init_std)

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1) if isinstance(self.base, nn.Conv2d) else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self._view(self.ssf_scale) + self._view(self.ssf_shift)

    @torch.no_grad()
    def folded(self) -> nn.Module:
        """``base`` with γ, β folded in: W' = diag(γ) W (per output channel), b' = γ ⊙ b + β."""
        weight = getattr(self.base, "weight", None)
        require(isinstance(weight, nn.Parameter), f"cannot fold SSF into {type(self.base).__name__}: no weight")
        gamma, beta = self.ssf_scale.to(weight.dtype), self.ssf_shift.to(weight.dtype)
        weight.mul_(gamma.view(-1, *([1] * (weight.dim() - 1))))
        bias = getattr(self.base, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.mul_(gamma).add_(beta)
        elif hasattr(self.base, "bias") or isinstance(self.base, (nn.Linear, nn.Conv2d)):
            self.base.bias = nn.Parameter(beta.clone(), requires_grad=False)  # bias-free Linear: β needs one
        elif bool(beta.any()):
            raise PeftlabError(f"cannot fold the SSF shift into {type(self.base).__name__} (it has no bias); "
                               "train with method.norms=false to merge on RMSNorm models")
        return self.base


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return int(module.weight.shape[0])  # norms: normalized_shape[-1]


@METHODS.register("ssf")
class Ssf(Method):
    config_cls = SsfConfig
    config: SsfConfig

    def sites(self, model: nn.Module, spec: ModelSpec) -> dict[str, nn.Module]:
        """Module name → module after which SSF inserts a scale and shift."""
        c = self.config
        found: dict[str, nn.Module] = dict(target_linears(model, spec, list(c.targets)))
        if c.norms:
            found.update(norm_modules(model, spec))
        if c.patch_embed:
            found.update({n: m for n, m in model.named_modules()
                          if n.endswith("patch_embed.proj") and isinstance(m, nn.Conv2d)})
        return found

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        freeze(model)
        for name, module in self.sites(model, spec).items():
            model.set_submodule(name, ScaleShift(module, _channels(module), self.config.init_std))
        if self.config.train_head:
            unfreeze_head(model, spec)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        names = [n for n, m in model.named_modules() if isinstance(m, ScaleShift)]
        for name in names:
            model.set_submodule(name, model.get_submodule(name).folded())
        return model
