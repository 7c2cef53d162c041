"""Activation measurement: the training forward on fake tensors, and what it saves for backward."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from peftlab.memory.states import Batch, LossFn, MemorySetting
from peftlab.methods.lisa import transformer_blocks


def _key(t: torch.Tensor) -> int:
    """Identity of the storage behind ``t`` (a fake tensor's data pointer is 0, so not that)."""
    return t.untyped_storage()._cdata


def _fakeify(model: nn.Module, mode: FakeTensorMode) -> None:
    """Every parameter and buffer of ``model`` that is not yet fake (meta, or real: created by a planner's
    restructuring) replaced by a fake CPU tensor of the same shape and dtype; tied parameters stay tied."""
    cpu = torch.device("cpu")
    done: dict[int, nn.Parameter] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        return FakeTensor(mode, t, cpu) if t.is_meta else mode.from_tensor(t)

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and not isinstance(p, FakeTensor):
                if id(p) not in done:
                    done[id(p)] = nn.Parameter(fake(p.detach()), requires_grad=p.requires_grad)
                module._parameters[name] = done[id(p)]
        for name, b in module._buffers.items():
            if b is not None and not isinstance(b, FakeTensor):
                module._buffers[name] = fake(b)


def _set_dtypes(model: nn.Module, dtypes: dict[int, torch.dtype], mode: FakeTensorMode) -> None:
    """Cast each (fake) parameter to ``dtypes[id(param)]`` in place, as the precision rule does before a phase."""
    with mode:
        for p in model.parameters():
            if p.dtype != dtypes[id(p)]:
                p.data = p.data.to(dtypes[id(p)])


def example_batch(model: nn.Module, head: str, setting: MemorySetting, num_labels: int | None) -> Batch:
    """A training batch of the task head's schema (token ids, all-ones attention mask, labels), made in the
    current tensor mode (under :class:`FakeTensorMode`: fake)."""
    b, t = setting.batch, setting.seq
    if head == "image_cls":
        import timm

        size = timm.data.resolve_model_data_config(model)["input_size"]
        return {"pixel_values": torch.zeros(b, *size), "labels": torch.zeros(b, dtype=torch.long)}
    ids = torch.zeros(b, t, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long)}
    if head == "causal_lm":
        batch["labels"] = ids
    elif head == "qa_span":
        batch["start_positions"] = batch["end_positions"] = torch.zeros(b, dtype=torch.long)
    else:
        batch["labels"] = torch.zeros(b, dtype=torch.float32 if head == "regression" else torch.long)
    return batch


# --------------------------------------------------------------------------------------------------------------
# activations


@dataclass
class Activations:
    """Bytes saved for backward in one forward, by where they were saved."""

    per_block: list[int]  # saved inside each transformer block (block inputs excluded)
    outside: int  # saved outside the blocks (embeddings, final norm, head, loss)
    largest_outside: int  # the largest single tensor saved outside the blocks (the logits' log-softmax for an LM)
    weight_copies: int  # autocast's bf16 copies of trained fp32 weights (counted in per_block/outside too)
    block_inputs: int  # the blocks' input tensors (what gradient checkpointing keeps)
    total: int  # every saved tensor once (no checkpointing)


class _EverythingSelected(TorchDispatchMode):
    """``nonzero`` on fake tensors has no known output size; answer as if every element were selected (exact for
    the filters models run on a training batch, e.g. DeBERTa's ``(labels >= 0).nonzero()``)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.nonzero.default:
            return torch.empty(args[0].numel(), args[0].dim(), dtype=torch.long)
        return func(*args, **(kwargs or {}))


def _is_weight_copy(t: torch.Tensor) -> bool:
    """Whether ``t`` is (a view of) a cast of a leaf that requires grad: autocast's cached bf16 copy of an fp32
    weight (a linear layer saves its transpose)."""
    fn = (t._base if t._base is not None else t).grad_fn
    return (fn is not None and type(fn).__name__ == "ToCopyBackward0"
            and hasattr(fn.next_functions[0][0], "variable"))


def measure_activations(model: nn.Module, batch: Batch, loss_fn: LossFn, autocast: torch.dtype | None,
                        mode: FakeTensorMode) -> Activations:
    """Run the training forward of ``model`` (fake tensors) once and account for what it saves for backward."""
    _, blocks = transformer_blocks(model, None)
    exclude = {_key(t) for t in itertools.chain(model.parameters(), model.buffers())}
    saved: dict[int, tuple[int, int | None, bool]] = {}  # storage → (bytes, block or None, weight copy)
    inputs: dict[int, int] = {}
    # every counted tensor stays referenced until the forward ends: a storage freed earlier (a block input nothing
    # saves, a saved tensor of a discarded branch) could hand its identity (``_key``) to a later saved tensor, which
    # would then be skipped (the count varied from run to run)
    held: list[torch.Tensor] = []
    where: list[int | None] = [None]

    def pack(t: torch.Tensor) -> torch.Tensor:
        copy_ = _is_weight_copy(t)
        for part in (t._indices(), t._values()) if t.layout == torch.sparse_coo else (t,):  # SHiRA's sparse delta
            key = _key(part)
            if key not in exclude and key not in saved:
                saved[key] = (part.untyped_storage().nbytes(), where[0], copy_)
                held.append(part)
        return t

    def enter(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            where[0] = i
            for t in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor) and _key(t) not in exclude:
                    inputs[_key(t)] = t.untyped_storage().nbytes()
                    held.append(t)
        return hook

    def leave(*_: Any) -> None:
        where[0] = None

    handles = [h for i, b in enumerate(blocks) for h in (b.register_forward_pre_hook(enter(i), with_kwargs=True),
                                                         b.register_forward_hook(leave))]
    try:
        with mode, _EverythingSelected(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    per_block = [sum(n for k, (n, b, _) in saved.items() if b == i and k not in inputs) for i in range(len(blocks))]
    outside = [n for k, (n, b, _) in saved.items() if b is None and k not in inputs]
    return Activations(per_block=per_block, outside=sum(outside), largest_outside=max(outside, default=0),
                       weight_copies=sum(n for n, b, copy_ in saved.values() if copy_ and b is not None),
                       block_inputs=sum(inputs.values()), total=sum(n for n, _, _ in saved.values()))
