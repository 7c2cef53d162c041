"""S2FT — Structured Sparse Fine-Tuning (Yang et al., NeurIPS 2024, arXiv 2412.06289; code Infini-AI-Lab/S2FT).

"Select sparsely, compute densely". Before training, a seeded random choice (official
``experiments/train/finetune.py``: ``random.sample`` over all layers at once, seed 0) picks

- ``v_ratio`` of all attention heads (over all layers) whose V-projection OUTPUT rows are trained,
- ``o_ratio`` of all heads whose O-projection INPUT columns are trained,
- ``u_ratio`` of all FFN channels whose up-projection OUTPUT rows are trained,
- ``d_ratio`` of all FFN channels whose down-projection INPUT columns are trained;

the number picked is ``int(ratio · units_per_layer · layers)`` as in the official code. Each chosen slice gets a
trainable dense block initialised at 0 (official ``S2ColumnLinear``/``S2RowLinear``, parameter ``s2``):

    rows:    y = x W₀ᵀ + b,  y[..., R] += x Δᵀ          Δ ∈ R^{|R| × in}   (v, up)
    columns: y = x W₀ᵀ + b + x[..., C] Δᵀ               Δ ∈ R^{out × |C|}  (o, down)

Everything else is frozen; merge folds the blocks into W (W[R, :] += Δ or W[:, C] += Δ) exactly, as the
official ``convert_s2_to_linear_layer``. Trainable count: (#heads · head_dim) · hidden for v/o and #channels ·
hidden for up/down (LLaMA3-8B, d_ratio 0.03: int(0.03·14336·32) = 13762 channels × 4096 = 56.4M).

Departures, none changing the maths:
- the official code co-permutes the coupled weights (q/k/v rows + o columns per head; gate/up rows + down
  columns per channel) so that each selected slice is one contiguous range. We keep the (sorted) indices
  instead and compute the block's contribution densely on the gathered slice (``index_select`` of the input
  columns, ``index_add`` into the output rows): the same function and the same gradients with no weight
  permutation, so the merged model keeps the original layout and state-dict keys, and any backbone works
  (BERT's value / attention.output.dense / intermediate.dense / output.dense included). W₀ is frozen and never
  gets a ``.grad``; autograd computes gradients only for the blocks;
- the official code samples with Python's global ``random`` after model loading; we use a private
  ``random.Random(seed)`` (same sampling order v, o, up, down), so the selection depends only on ``seed``;
- heads are counted per projection (``v.out_features // head_dim``, ``o.in_features // head_dim``), which
  equals the official ``num_attention_heads`` for multi-head attention and also handles grouped-query V;
- the gate projection is only permuted in the official code, never trained, so it has no ratio here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from peftlab.config_utils import PositiveFloat, UnitInterval, require
from peftlab.methods import METHODS
from peftlab.methods.base import Method, MethodConfig, freeze, named_targets, unfreeze_head
from peftlab.methods.delta_linear import DeltaLinear, merge_delta_linears
from peftlab.models import ModelSpec

# logical target → (ratio option, which side of W is sliced, unit of selection)
ROLES: dict[str, tuple[str, str, str]] = {
    "v": ("v_ratio", "rows", "head"),
    "o": ("o_ratio", "cols", "head"),
    "up": ("u_ratio", "rows", "channel"),
    "down": ("d_ratio", "cols", "channel"),
}


@dataclass
class S2ftConfig(MethodConfig):
    lr: PositiveFloat = 2e-4  # official commonsense scripts (LLaMA2/3): 2e-4, linear schedule, weight decay 0
    v_ratio: UnitInterval = 0.0  # fraction of all attention heads whose V-proj output rows train
    o_ratio: UnitInterval = 0.0  # fraction of all attention heads whose O-proj input columns train
    u_ratio: UnitInterval = 0.0  # fraction of all FFN channels whose up-proj output rows train
    d_ratio: UnitInterval = 0.03  # fraction of all FFN channels whose down-proj input columns train (LLaMA3-8B script)
    seed: int = 0  # selection seed (official: --seed 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(not self.targets, "S2FT picks its modules by role (v, o, up, down: conf/model targets); set the "
                f"ratios {[k for k, _, _ in ROLES.values()]} instead of method.targets={self.targets}")
        require(any(getattr(self, k) > 0 for k, _, _ in ROLES.values()),
                f"S2FT trains nothing: set at least one of {[k for k, _, _ in ROLES.values()]} > 0")


class S2Linear(DeltaLinear):
    """A frozen ``nn.Linear`` plus a trainable dense block on the output rows or input columns ``index``."""

    def __init__(self, linear: nn.Linear, side: str, index: list[int]) -> None:
        super().__init__(linear)
        self.side = side
        dev, dtype = self.weight.device, self.weight.dtype
        self.register_buffer("s2_index", torch.tensor(sorted(index), dtype=torch.long, device=dev))
        shape = (len(index), self.in_features) if side == "rows" else (self.out_features, len(index))
        self.s2_delta = nn.Parameter(torch.zeros(shape, dtype=dtype, device=dev))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.side == "rows":
            return y.index_add(-1, self.s2_index, F.linear(x, self.s2_delta))  # (..., |R|) into rows R
        return y + F.linear(x.index_select(-1, self.s2_index), self.s2_delta)  # (..., |C|) → (..., out)

    def delta_weight(self) -> torch.Tensor:
        delta = torch.zeros_like(self.weight)
        if self.side == "rows":
            delta[self.s2_index] = self.s2_delta.detach()
        else:
            delta[:, self.s2_index] = self.s2_delta.detach()
        return delta

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.side}={len(self.s2_index)}"


def head_dim(model: nn.Module) -> int:
    """Per-head width from the transformers config (``head_dim`` or hidden / heads)."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    require(heads is not None, "S2FT head selection (v_ratio/o_ratio) needs a transformers model config with "
            "num_attention_heads; use u_ratio/d_ratio only on this model")
    return int(getattr(config, "head_dim", None) or config.hidden_size // heads)


@METHODS.register("s2ft")
class S2ft(Method):
    config_cls = S2ftConfig
    config: S2ftConfig

    def __init__(self, config: S2ftConfig) -> None:
        super().__init__(config)
        self.picked: dict[str, int] = {}  # role → heads / channels picked over all layers

    def select(self, model: nn.Module, spec: ModelSpec) -> dict[str, tuple[str, list[int]]]:
        """Module name → (side, sorted row/column indices) of the seeded random selection."""
        rng = random.Random(self.config.seed)
        plan: dict[str, tuple[str, list[int]]] = {}
        for role, (key, side, unit) in ROLES.items():
            ratio = getattr(self.config, key)
            if ratio == 0:
                continue
            modules = list(named_targets(model, spec, [role]))
            width = head_dim(model) if unit == "head" else 1
            sizes = {(m.out_features if side == "rows" else m.in_features) // width for _, m in modules}
            require(len(sizes) == 1, f"S2FT: {role} projections differ in size across layers: {sorted(sizes)}")
            per_layer = sizes.pop()
            n = int(ratio * per_layer * len(modules))
            require(n >= 1, f"method.{key}={ratio} selects 0 of the {per_layer * len(modules)} {unit}s of "
                    f"'{role}'; the smallest useful value is {1 / (per_layer * len(modules)):.4g}")
            self.picked[role] = n
            chosen = sorted(rng.sample(range(per_layer * len(modules)), n))  # global over layers, as official
            for i, (name, _) in enumerate(modules):
                require(name not in plan, f"S2FT: module {name} matches two roles; check conf/model targets")
                units = [u % per_layer for u in chosen if u // per_layer == i]
                plan[name] = (side, [u * width + j for u in units for j in range(width)])
        return {name: entry for name, entry in plan.items() if entry[1]}

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        freeze(model)
        for name, (side, index) in self.select(model, spec).items():
            linear = model.get_submodule(name)
            require(isinstance(linear, nn.Linear), f"S2FT needs nn.Linear targets; {name} is {type(linear).__name__}")
            model.set_submodule(name, S2Linear(linear, side, index))
        if self.config.train_head:
            unfreeze_head(model, spec)
        return model

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = super().adapter_state_dict(model)  # the blocks (and the head)
        state.update({n: b.clone() for n, b in model.named_buffers() if n.endswith("s2_index")})
        return state

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_delta_linears(model)

    def extra_counts(self, model: nn.Module) -> dict[str, Any]:
        names = {"v": "v_heads", "o": "o_heads", "up": "up_channels", "down": "down_channels"}
        return {names[role]: n for role, n in self.picked.items()}
