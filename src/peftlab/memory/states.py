"""State accounting: what one phase holds on the device and in CPU memory, by kind, and its peak moments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.config_utils import require

# bf16-master: DeepSpeed bf16 (bf16 weights and gradients, fp32 master and Adam); bf16-true: pure bf16, every tensor
# bf16 including the trained ones and Adam's moments (an accounting option, to compare with baselines that train so
# (LitGPT's bf16-true, HF peft's full fine-tuning); the trainer refuses it, docs/precision.md)
PRECISIONS = ("bf16-mixed", "16-mixed", "32-true", "bf16-master", "bf16-true")
HALF_MODEL = ("bf16-master", "bf16-true")  # precisions that hold every weight in bf16
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
    # optim.offload (peftlab.offload): phases that train every weight keep their fp32 masters, gradients and Adam
    # moments in CPU memory, the weights in their load dtype on the device; None: the config's optim.offload
    optimizer_offload: bool | None = None

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
        if self.optimizer_offload is None:
            self.optimizer_offload = False


@dataclass
class Split:
    """Bytes of one training phase, by kind (all on the device unless named ``offloaded``)."""

    trainable: int = 0  # trained parameters (elements), as the run record's params.trainable
    frozen_weights: int = 0  # frozen parameters in their load dtype + the backbone's buffers
    trained_params: int = 0  # fp32 under the precision rule (the load dtype under bf16-master and when offloaded)
    master_copies: int = 0  # fp32 copies of the trained weights on the device (bf16-master only)
    gradients: int = 0  # of the trained parameters, in their dtype
    optimizer_state: int = 0  # AdamW: two moments (fp32; bf16 under bf16-true) + a step count per trained tensor
    method_state: int = 0  # buffers the method adds + tensors it holds on the device
    activations: int = 0  # saved for backward at the end of the forward (see the module docstring)
    offloaded: int = 0  # held in CPU memory, not part of the device peak (SMT's sums; the optimizer when offloaded)
    engine: str = "AdamW on the device"  # where the optimizer of this phase runs (peftlab.offload)
    moments: dict[str, int] = field(default_factory=dict)  # device bytes at each moment of a step (peak = max)

    def by_kind(self) -> dict[str, int]:
        """Bytes per kind (every field but ``trainable``, ``engine`` and ``moments``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("trainable", "engine", "moments")}

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

