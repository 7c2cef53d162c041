"""State accounting: what one phase holds on the device and in CPU memory, by kind, and its peak moments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.config_utils import require

PRECISIONS = ("bf16-mixed", "16-mixed", "32-true", "bf16-master")
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # Lightning's mixed precisions
FP32 = 4  # bytes of an fp32 element (trained parameters, their gradients, Adam moments, gradient sums)
GiB = 2**30

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class MemorySetting:
    """What the prediction depends on besides model × method × task."""

    batch: int  # sequences (images) per optimizer step on one device
    seq: int  # tokens per sequence (ignored by image models)
    precision: str = "bf16-mixed"  # see PRECISIONS and the module docstring
    grad_checkpointing: bool = False  # recompute each block in backward (HF gradient_checkpointing_enable)
    device: str = "cuda"  # where the run trains; decides the two defaults below
    offload: bool | None = None  # SMT's warm-up gradient sums in CPU memory; None: on an accelerator (official)
    foreach: bool | None = None  # AdamW's multi-tensor step; None: torch's default (on CUDA)
    optimizer_offload: bool = False  # ZeRO-Offload: master copies and Adam moments in CPU memory, the step on the CPU

    def __post_init__(self) -> None:
        for key in ("batch", "seq"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1, f"{key} must be an integer >= 1 (e.g. {key}=16), "
                    f"got {value!r}")
        require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.offload is None:
            self.offload = self.device != "cpu"
        if self.foreach is None:
            self.foreach = self.device == "cuda"


@dataclass
class Split:
    """Bytes of one training phase, by kind (all on the device unless named ``offloaded``)."""

    trainable: int = 0  # trained parameters (elements), as the run record's params.trainable
    frozen_weights: int = 0  # frozen parameters in their load dtype + the backbone's buffers
    trained_params: int = 0  # fp32 under the precision rule (the load dtype under bf16-master)
    master_copies: int = 0  # fp32 copies of the trained weights (bf16-master only)
    gradients: int = 0  # of the trained parameters, in their dtype
    optimizer_state: int = 0  # AdamW: two fp32 moments + a step count per trained tensor
    method_state: int = 0  # buffers the method adds + tensors it holds on the device
    activations: int = 0  # saved for backward at the end of the forward (see the module docstring)
    offloaded: int = 0  # held in CPU memory, not part of the device peak (SMT's sums; the optimizer when offloaded)
    moments: dict[str, int] = field(default_factory=dict)  # device bytes at each moment of a step (peak = max)

    def by_kind(self) -> dict[str, int]:
        """Bytes per kind (every field but ``trainable`` and ``moments``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("trainable", "moments")}

    def tensor_bytes(self) -> int:
        """What ``scripts/bench_methods.py`` measures: every kind of bytes above on the device, no workspace."""
        return (self.frozen_weights + self.trained_params + self.master_copies + self.gradients
                + self.optimizer_state + self.method_state + self.activations)

    @property
    def peak(self) -> int:
        return max(self.moments.values())


@dataclass
class Prediction:
    """One :class:`Split` per phase of the method (``train``; ``warmup`` first for SMT/SPT) and the notes
    (assumptions) behind them."""

    phases: dict[str, Split]
    labels: dict[str, str]
    inputs: str  # the batch the forward ran on, e.g. "input_ids 16×256"
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(s.peak for s in self.phases.values())

