"""CapaBoost layers: one shared weight used through ``d`` fixed binary masks, in one matmul.

Paper (Song et al., ICLR 2024, arXiv 2407.01320): a PEFT module's weight W is shared by d parallel copies,
copy i uses W ⊙ M_i, and the copies' outputs are summed. For LoRA (A ∈ R^{r×d_in}, B ∈ R^{d_out×r})

    h = W₀x + (α/r) · Σᵢ (B ⊙ M_iᴮ)(A ⊙ M_iᴬ) x                                                  (1)

and the summed update Σᵢ (B ⊙ M_iᴮ)(A ⊙ M_iᴬ) can reach rank min(d·r, d_in, d_out) with the parameters of one
rank-r LoRA. For a bottleneck adapter (down D, up U, elementwise activation f)

    h = x + Σᵢ (U ⊙ M_iᵁ) f((D ⊙ M_iᴰ) x + b_D) + b_U.                                              (2)

Cheap exact form. Stacking the d masked copies turns each sum into a single product:
Â = [A⊙M_1; …; A⊙M_d] ∈ R^{d·r×d_in} and B̂ = [B⊙M_1, …, B⊙M_d] ∈ R^{d_out×d·r} give
Σᵢ (B⊙M_iᴮ)(A⊙M_iᴬ) x = B̂ (Â x), i.e. two matmuls of inner width d·r instead of 2d narrow ones and d−1
additions of d_out-wide outputs; because f acts elementwise, (2) is likewise Û f(D̂ x + [b_D; …; b_D]) + b_U.
Â and B̂ are rebuilt from the shared weight once per forward (an elementwise product over d·r·(d_in + d_out)
entries). Dense emulation still costs d× the branch FLOPs of plain LoRA; the paper's "free" needs sparse kernels.

Training update. The official code (LINs-lab/CapaBoost, ``key_code_sample.py`` and ``Trainer`` lines around
"apply_masks_to_grads_of_tied_weights") keeps d physical copies W_i, sets W_i ← W ⊙ M_i before the forward,
after backward multiplies each copy's gradient by M_i and sums them, restores every copy to the dense W and
lets the optimizer step each copy with the summed gradient, so all copies keep one value W updated with

    g_W = Σᵢ M_i ⊙ ∂L/∂(W ⊙ M_i).                                                                   (3)

This is exactly what autograd gives for one shared parameter W entering the forward as W.repeat(...) ⊙ M̂
(``repeat`` sums the d chunks of the gradient, ``⊙ M̂`` masks them), so we keep one tensor W and let autograd
compute (3); ``tests/methods/test_capaboost.py`` checks it against an emulation of the tied copies. Entries no
mask keeps get exactly zero gradient. Departures from the official run, all deliberate:
- gradient clipping sees W's gradient once (the official clip sees d identical copies, a √d larger norm);
- every B is zero at initialisation (officially only B's first copy is; the others start random for one step);
- adapter biases: one shared b_D (in every copy) and one b_U added once, with autograd's summed gradients
  (officially each copy adds its own b_U, so the output holds d·b_U, and bias gradients are not summed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FAN_OUT, FAN_IN = "fan_out", "fan_in"


class MaskedTiedLinear(nn.Module):
    """A linear map whose one weight W (out × in) is used by ``d`` copies, copy i through the fixed mask M_i.

    ``mode="fan_out"``: input (…, in) → the d copies' outputs side by side (…, d·out); a bias is shared by
    every copy. ``mode="fan_in"``: input (…, d·in), copy i reading chunk i → the sum over copies (…, out);
    a bias is added once. A fan_out layer followed by a fan_in layer (with any elementwise map between)
    computes Σᵢ (second ⊙ M_i)(first ⊙ M_i)-style sums, as in equations (1) and (2).

    Parameters: ``weight`` (and ``bias``), trainable, stored once. Buffer: ``mask`` (bool), the d masks
    stacked in the layout of the tiled weight: (d·out, in) for fan_out, (out, d·in) for fan_in.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, masks: torch.Tensor, mode: str,
                 copy_dropout: float = 0.0) -> None:
        super().__init__()
        if mode not in (FAN_OUT, FAN_IN):
            raise ValueError(f"mode must be '{FAN_OUT}' or '{FAN_IN}', got '{mode}'")
        if masks.shape[1:] != weight.shape:
            raise ValueError(f"masks {tuple(masks.shape)} do not fit weight {tuple(weight.shape)}")
        self.mode = mode
        self.copies = int(masks.shape[0])
        self.copy_dropout = copy_dropout  # fan_out only: dropout on the input, drawn independently per copy
        self.weight = weight
        self.bias = bias
        dim = 0 if mode == FAN_OUT else 1
        self.register_buffer("mask", torch.cat(list(masks.to(device=weight.device, dtype=torch.bool)), dim=dim))

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def tiled_weight(self) -> torch.Tensor:
        """[W⊙M_1; …; W⊙M_d] (fan_out) or [W⊙M_1, …, W⊙M_d] (fan_in); autograd maps its gradient to (3)."""
        reps = (self.copies, 1) if self.mode == FAN_OUT else (1, self.copies)
        return self.weight.repeat(*reps) * self.mask

    def copy_masks(self) -> torch.Tensor:
        """The masks as (d, out, in)."""
        return torch.stack(self.mask.chunk(self.copies, dim=0 if self.mode == FAN_OUT else 1))

    def union_mask(self) -> torch.Tensor:
        """Entries of W kept by at least one copy: the only ones that ever receive gradient."""
        return self.copy_masks().any(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.tiled_weight()
        if self.mode == FAN_IN:
            return F.linear(x, w, self.bias)  # (…, d·in) → (…, out): the sum over copies
        bias = None if self.bias is None else self.bias.repeat(self.copies)
        if self.training and self.copy_dropout > 0:
            biases = (None,) * self.copies if bias is None else bias.chunk(self.copies)
            chunks = zip(w.chunk(self.copies), biases, strict=True)
            return torch.cat([F.linear(F.dropout(x, self.copy_dropout, True), wi, bi) for wi, bi in chunks], dim=-1)
        return F.linear(x, w, bias)  # (…, in) → (…, d·out)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, copies={self.copies}, mode={self.mode}"


class CapaBoostLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus the CapaBoost-LoRA branch of equation (1).

    ``capaboost_A`` (fan_out, r × d_in) and ``capaboost_B`` (fan_in, d_out × r) are the only trainable tensors;
    A is Kaiming-uniform (a = √5) and B zero, as in LoRA/peft, so the model starts as the base model.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, masks_a: torch.Tensor, masks_b: torch.Tensor,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.r = r
        self.scaling = alpha / r
        device = base_layer.weight.device
        a = nn.Parameter(torch.empty(r, base_layer.in_features, device=device))  # fp32, like peft's adapters
        b = nn.Parameter(torch.zeros(base_layer.out_features, r, device=device))
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.capaboost_A = MaskedTiedLinear(a, None, masks_a, FAN_OUT, copy_dropout=dropout)
        self.capaboost_B = MaskedTiedLinear(b, None, masks_b, FAN_IN)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        branch = self.capaboost_B(self.capaboost_A(x.to(self.capaboost_A.weight.dtype)))  # (…, d·r) → (…, d_out)
        return result + (branch * self.scaling).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """(α/r)·Σᵢ (B⊙M_iᴮ)(A⊙M_iᴬ) = (α/r)·B̂Â, shape (d_out, d_in)."""
        return self.scaling * (self.capaboost_B.tiled_weight() @ self.capaboost_A.tiled_weight())

    def merged(self) -> nn.Linear:
        """The base layer with the update folded in: the same outputs at the base layer's cost."""
        with torch.no_grad():
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        return self.base_layer
