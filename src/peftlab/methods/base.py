"""The protocol every PEFT method implements, and helpers shared by methods.

A method is a config dataclass (every field documented, validated in ``__post_init__`` so that
impossible settings fail before any model loads) plus a :class:`Method` subclass registered with
``@METHODS.register("<name>")``. The Lightning module only ever calls the hooks below, so it never
branches on the method.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.config_utils import PositiveFloat, require
from peftlab.models import ModelSpec

ADAPTER_FILE = "adapter.safetensors"  # what Method.save_adapter writes by default


@dataclass
class MethodConfig:
    """Options every method has. Field types (and the ranges of ``PositiveFloat``-like annotations) are checked
    when the config is built (``peftlab.config_utils.build_dataclass``); ``__post_init__`` checks the rest."""

    name: str
    lr: PositiveFloat = 1e-4  # the run's learning rate (the optimizer's, peftlab.optim; SMT: its warm-up's)
    train_head: bool = True  # also train the task head (classifier) named in the model config
    targets: list[str] = field(default_factory=list)  # logical module names (see conf/model/*.yaml)

    def __post_init__(self) -> None:
        """Checks that involve several fields (none here; subclasses extend it)."""


class Method:
    """Transforms a backbone into a model whose only trainable parameters are the method's."""

    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    # When on_train_batch_end reports a new trainable set, the optimizer is rebuilt. True: the lr schedule starts
    # again (SMT's block phase has its own lr and warm-up); False: the one schedule of the run continues (LISA).
    restarts_schedule: ClassVar[bool] = True
    # True when on_train_batch_end may change which tensors train (SMT, LISA, SPT): DDP is re-wrapped around the
    # new set; FSDP cannot follow such a change and is refused (docs/multi_gpu.md).
    changes_trainable_set: ClassVar[bool] = False

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        """Freeze/replace/wrap modules of ``model``; return the model to train."""
        raise NotImplementedError

    # --- training-time hooks, called by PeftModule (defaults: nothing to do) ---
    def on_fit_start(self, model: nn.Module, total_steps: int) -> None:
        """Once before training, with the number of optimizer steps the run will take (AdaLoRA's schedule)."""

    def on_after_backward(self, model: nn.Module) -> None:
        """After each backward pass (gradients are in ``.grad``)."""

    def on_before_backward(self, loss_scale: float | None) -> None:
        """Before each backward pass: the factor its gradients carry under fp16 loss scaling (None without it).
        Methods that read gradients in backward divide by it (:mod:`peftlab.methods.grad_probe`)."""

    def gradient_overflow(self) -> bool:
        """Once per optimizer step, after its last backward: whether a gradient the method read in backward and
        that the optimizer never sees (probed tensors) held inf/NaN; under loss scaling the step is then skipped."""
        return False

    def on_before_optimizer_step(self, model: nn.Module, skipped: bool) -> None:
        """Once per optimizer step, after its last backward and before the update: ``.grad`` holds the step's
        gradients, unscaled, averaged over the processes, not yet clipped. ``skipped``: the loss scaler found
        inf/NaN gradients and the optimizer will not update (the run's step counter still advances, as in HF
        Trainer); what the method read during the step must then be dropped."""

    def on_train_batch_end(self, model: nn.Module, step: int) -> bool:
        """Once after each optimizer step ``step`` (1-based; taken or skipped; never between the micro-batches
        of gradient accumulation). Return True when the set of trainable parameters changed, so the optimizer
        and scheduler are rebuilt over the new set."""
        return False

    def gradient_phase(self, model: nn.Module, batches: Any, loss_fn: Any = None) -> nn.Module:
        """Outside Lightning (tests, benchmarks): run the gradient phase that decides what trains (SMT's warm-up,
        SPT's sensitivity pass) on ``batches`` and switch; methods without one return ``model`` unchanged."""
        return model

    def probed_parameters(self, model: nn.Module) -> set[str]:
        """Names of parameters that require grad only so that the method can read their gradient, never updated
        (SMT's ``grad_only`` warm-up, SPT's sensitivity pass). Under DDP they are not averaged: the method's
        hooks read the gradient of this process and free it; the method combines processes itself."""
        return set()

    def current_lr(self) -> float:
        """Learning rate for an optimizer built now (a method may switch it, e.g. SMT after warm-up)."""
        return self.config.lr

    def lr_warmup_steps(self) -> int | None:
        """Warm-up steps of the lr schedule built now; None: ``optim.warmup_steps``/``warmup_ratio`` (SMT's block
        phase has its own, 0 by default as in the official code)."""
        return None

    def check_total_steps(self, total_steps: int) -> None:
        """Before training, with the run's number of optimizer steps: raise ConfigError if the method's phases
        cannot fit in it (e.g. an SMT warm-up as long as the run)."""

    def trained_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the optimizer updates now (fp32 under the precision rule, :mod:`peftlab.precision`):
        every parameter that requires grad, except :meth:`probed_parameters` (they stay in their load dtype)."""
        probed = self.probed_parameters(model)
        return [p for n, p in model.named_parameters() if p.requires_grad and n not in probed]

    # --- deployment and persistence ---
    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the method's update into plain base-model layers (zero inference overhead)."""
        raise NotImplementedError(f"method '{self.name}' defines no merge")

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What the method trained (plus any buffers it needs to reproduce outputs)."""
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        """Load what :meth:`adapter_state_dict` saved onto a model this method was just applied to."""
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise KeyError(f"adapter keys not in the model: {result.unexpected_keys[:5]}")
        return model

    def save_adapter(self, model: nn.Module, directory: Path) -> None:
        """Export hook: write what the method trained into ``directory`` (default: :meth:`adapter_state_dict`
        as ``adapter.safetensors``; peft methods write peft's own adapter directory)."""
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in self.adapter_state_dict(model).items()}
        save_file(state, str(directory / ADAPTER_FILE))

    def load_adapter(self, model: nn.Module, directory: Path) -> nn.Module:
        """Inverse of :meth:`save_adapter`, onto a model this method was just applied to."""
        from safetensors.torch import load_file

        return self.load_adapter_state_dict(model, load_file(str(directory / ADAPTER_FILE)))

    def method_state(self) -> dict[str, Any]:
        """Extra, non-tensor state the method needs to rebuild its structure (saved in checkpoints)."""
        return {}

    def checkpoint_names(self, model: nn.Module) -> set[str]:
        """Names of frozen parameters a checkpoint must still hold because training changed them
        (e.g. SMT's full-FT warm-up); trainable parameters and buffers are always kept."""
        return set()

    def load_method_state(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        """Rebuild the structure described by :meth:`method_state` on a freshly applied model."""
        return model

    def resume_state(self) -> dict[str, Any]:
        """Training-time state an exactly resumed run needs beyond the state dict and :meth:`method_state`
        (may hold tensors; checkpoints only, never run records), e.g. SMT's warm-up gradient sums."""
        return {}

    def load_resume_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state` (after :meth:`load_method_state`, before the state dict loads)."""

    def extra_counts(self, model: nn.Module) -> dict[str, Any]:
        """Method-specific parameter counts for the run record (e.g. CapaBoost: stored vs receiving gradient)."""
        return {}


def freeze(model: nn.Module) -> None:
    """Every parameter of ``model`` frozen."""
    for p in model.parameters():
        p.requires_grad_(False)


def head_module_names(model: nn.Module, spec: ModelSpec) -> list[str]:
    """Names of the task-head modules (outermost match only)."""
    names: list[str] = []
    for name, _ in model.named_modules():
        if name and spec.is_head(name) and not any(name.startswith(f"{n}.") for n in names):
            names.append(name)
    return names


def head_parameter_count(model: nn.Module, spec: ModelSpec) -> int:
    """Parameters of the task-head modules of ``model`` (:func:`head_module_names`), tied tensors once: what a trained
    head adds to a trainable count (papers' "#Params" columns count the method alone, e.g. LoRA r=8 on RoBERTa-base's
    q, v: 294,912, the LoRA paper's 0.3M)."""
    heads = [model.get_submodule(name) for name in head_module_names(model, spec)]
    return sum({id(p): p.numel() for head in heads for p in head.parameters()}.values())


def unfreeze_head(model: nn.Module, spec: ModelSpec) -> None:
    """Make the task-head parameters trainable."""
    for name in head_module_names(model, spec):
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)


def named_targets(model: nn.Module, spec: ModelSpec, logical: list[str]) -> Iterator[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs whose names match the ``logical`` targets of ``spec``."""
    pattern = re.compile(spec.target_regex(logical))
    found = False
    for name, module in model.named_modules():
        if pattern.fullmatch(name):
            found = True
            yield name, module
    require(found, f"targets {logical} match no module of model '{spec.name}' (check conf/model/{spec.name}.yaml)")


def keyed_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator seeded by (``seed``, ``key``): the same stream on every process and in every run with that
    seed, whatever the global generators did before (``zlib.crc32``: stable across processes, unlike ``hash``)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
