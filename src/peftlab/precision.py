"""The mixed-precision rule, the same for every method (docs/precision.md).

- **Frozen** parameters stay in the dtype the model was loaded in (``model.dtype``; bf16 for the LLaMA configs):
  that is where half precision saves memory.
- **Trained** parameters (whatever the optimizer updates: full fine-tuning's weights, SMT's warm-up weights and
  ``smt_delta`` blocks, LoRA/DoRA/CapaBoost/adapter/SSF/SpIEL/... tensors, task heads) are fp32, so AdamW
  adds each update to an fp32 value (in bf16, 0.01 + 1e-5 == 0.01: an update below half a unit in the last
  place is lost) and its moments are fp32.
- The forward runs under autocast (``trainer.precision=bf16-mixed`` or ``16-mixed``): matmuls run in half
  precision whatever the parameter dtype.

This is what the official SMT code (HectorHHZ/Sparse_Matrix_Tuning ``deepspeed/``, DeepSpeed bf16) gets from
DeepSpeed: bf16 compute, fp32 master weights and fp32 Adam state. Here the fp32 parameter *is* the master: a
trained element costs 4 bytes (value) + 4 (gradient) + 8 (Adam moments), and autocast keeps a bf16 copy (2 bytes)
of each trained matrix it casts, from the forward until its backward; DeepSpeed keeps a bf16 model copy (2) + an
fp32 master (4) + its gradients and Adam state. A frozen element costs its load dtype (2 bytes in bf16).

:class:`PrecisionRule` is applied by the Lightning module each time it (re)builds the optimizer, so it covers
every method and every change of a method's trained set (SMT's switch, LISA's periodic draws, SPT's switch):
tensors that start training are cast to fp32, tensors that stop training go back to their load dtype (rounded,
as DeepSpeed's bf16 model copy is when its fp32 master is dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from peftlab.config_utils import require

HALF = (torch.bfloat16, torch.float16)
# trainer.precision values that run the forward under autocast (Lightning 2 names and their legacy aliases)
MIXED = ("bf16-mixed", "16-mixed", "bf16", "16")
# values that cast the whole model, trained tensors included, to half precision (updates would be lost)
HALF_TRUE = ("bf16-true", "16-true")


class PrecisionRule:
    """Casts trained parameters to fp32 and returns no-longer-trained ones to the dtype they were loaded in."""

    def __init__(self) -> None:
        # id → (parameter, its dtype before this rule cast it to fp32); by identity, not name: a method may move a
        # parameter (a parametrization renames W to ``parametrizations.weight.original``)
        self.load_dtype: dict[int, tuple[nn.Parameter, torch.dtype]] = {}

    def apply(self, model: nn.Module, trained: Iterable[nn.Parameter]) -> None:
        """Make exactly ``trained`` fp32 (their stale gradients are dropped); call before building an optimizer."""
        trained_ids = {id(p) for p in trained}
        present = set()
        for p in model.parameters():
            present.add(id(p))
            if id(p) in trained_ids and p.dtype in HALF:
                self.load_dtype[id(p)] = (p, p.dtype)
                p.data = p.data.float()
                p.grad = None
            elif id(p) not in trained_ids and id(p) in self.load_dtype:
                p.data = p.data.to(self.load_dtype.pop(id(p))[1])
                p.grad = None
        for gone in set(self.load_dtype) - present:  # no longer in the model
            del self.load_dtype[gone]


def dtype_names(params: Iterable[nn.Parameter]) -> str:
    """``"bfloat16"``, ``"bfloat16+float32"``... for the floating dtypes among ``params``; ``"none"`` if empty."""
    names = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.is_floating_point()})
    return "+".join(names) or "none"


def describe(model: nn.Module, trained: Iterable[nn.Parameter], trainer_precision: Any) -> dict[str, str]:
    """The run record's ``precision``: dtypes of the frozen and of the trained parameters, and the trainer's
    precision (autocast) setting."""
    trained_ids = {id(p) for p in trained}
    params = list(model.parameters())
    return {"frozen": dtype_names(p for p in params if id(p) not in trained_ids),
            "trained": dtype_names(p for p in params if id(p) in trained_ids),
            "trainer": str(trainer_precision)}


def check(model_dtype: str, trainer_precision: Any) -> None:
    """A half-precision model needs autocast (frozen half and trained fp32 tensors meet in every layer), and no
    setting may cast trained tensors to half precision."""
    precision = str(trainer_precision)
    require(precision not in HALF_TRUE, f"trainer.precision={precision} casts the trained tensors to half precision "
            "(small updates are lost); use trainer.precision=bf16-mixed (fp32 trained tensors, bf16 compute)")
    if model_dtype != "float32":
        require(precision in MIXED, f"model.dtype={model_dtype} keeps frozen weights in half precision and trains "
                f"fp32 tensors under autocast, which trainer.precision={precision} does not enable; set "
                "trainer.precision=bf16-mixed (trainer=gpu does) or model.dtype=float32")
