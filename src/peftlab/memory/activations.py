"""Activation measurement: the training forward on fake tensors, and what it saves for backward."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from peftlab.memory.replay import Record, block_signature, call_signature, is_weight_copy, record, replay, storage_key
from peftlab.memory.states import Batch, LossFn, MemorySetting
from peftlab.methods.lisa import transformer_blocks


def _fakeify(model: nn.Module, mode: FakeTensorMode) -> None:
    """Every parameter and buffer of ``model`` that is not yet fake (meta, or real: created by a planner's
    restructuring) replaced by a fake CPU tensor of the same shape and dtype; tied parameters stay tied."""
    cpu = torch.device("cpu")
    done: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        return FakeTensor(mode, t, cpu) if t.is_meta else mode.from_tensor(t)

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and not isinstance(p, FakeTensor):
                if id(p) not in done:  # nn.Parameter(t) of a tensor subclass, without its second (fake) detach
                    done[id(p)] = fake(p.detach()).requires_grad_(p.requires_grad)
                    done[id(p)]._is_param = True  # what makes it an nn.Parameter (torch/nn/parameter.py)
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


class _Tracer(TorchDispatchMode):
    """``nonzero`` on fake tensors has no known output size: answered as if every element were selected (exact for
    the filters models run on a training batch, e.g. DeBERTa's ``(labels >= 0).nonzero()``). While ``created`` is a
    set, the storages the ops allocate (outputs that alias no input) are added to it, and kept alive in ``held``."""

    def __init__(self) -> None:
        super().__init__()
        self.created: set[int] | None = None
        self.held: list[torch.Tensor] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.nonzero.default:
            return torch.empty(args[0].numel(), args[0].dim(), dtype=torch.long)
        out = func(*args, **(kwargs or {}))
        if self.created is not None:
            inputs = {storage_key(p) for t in torch.utils._pytree.tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor) for p in _parts(t)}
            for t in torch.utils._pytree.tree_leaves(out):
                for part in _parts(t) if isinstance(t, torch.Tensor) else ():
                    if storage_key(part) not in inputs:
                        self.created.add(storage_key(part))
                        self.held.append(part)
        return out


def _parts(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors holding ``t``'s data: itself, or a sparse COO tensor's indices and values (SHiRA's delta)."""
    return (t._indices(), t._values()) if t.layout == torch.sparse_coo else (t,)


def _direct(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """transformers' checkpoint function replaced while measuring: the block runs as its recompute in backward does
    (with the keyword arguments gradient checkpointing sets), and every tensor it saves is seen."""
    return function(*args, **kwargs)


def _tied(model: nn.Module, blocks: nn.Module) -> set[int]:
    """Indices of the blocks holding a parameter that another module holds too (never replayed)."""
    counts = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    tied = set()
    for i, block in enumerate(blocks):
        own = collections.Counter(id(p) for _, p in block.named_parameters(remove_duplicate=False))
        if any(counts[k] > n for k, n in own.items()):
            tied.add(i)
    return tied


def measure_activations(model: nn.Module, batch: Batch, loss_fn: LossFn, autocast: torch.dtype | None,
                        mode: FakeTensorMode, replay_blocks: bool = True) -> Activations:
    """Run the training forward of ``model`` (fake tensors) once and account for what it saves for backward;
    ``replay_blocks``: a block identical to one already run is replayed from its record (:mod:`.replay`, exact)."""
    _, blocks = transformer_blocks(model, None)
    exclude = {storage_key(t) for t in itertools.chain(model.parameters(), model.buffers())}
    # storage (or a replayed block's ("replay", block, n)) → (bytes, block or None, weight copy)
    saved: dict[Hashable, tuple[int, int | None, bool]] = {}
    inputs: dict[int, int] = {}
    # every counted tensor stays referenced until the forward ends: a storage freed earlier (a block input nothing
    # saves, a saved tensor of a discarded branch) could hand its identity (``storage_key``) to a later saved tensor,
    # which would then be skipped (the count varied from run to run)
    held: list[torch.Tensor] = []
    where: list[int | None] = [None]

    def pack(t: torch.Tensor) -> torch.Tensor:
        copy_ = is_weight_copy(t)
        for part in _parts(t):
            key = storage_key(part)
            if key not in exclude and key not in saved:
                saved[key] = (part.untyped_storage().nbytes(), where[0], copy_)
                held.append(part)
        return t

    def enter(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            where[0] = i
            for t in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor) and storage_key(t) not in exclude:
                    inputs[storage_key(t)] = t.untyped_storage().nbytes()
                    held.append(t)
        return hook

    def leave(*_: Any) -> None:
        where[0] = None

    tracer = _Tracer()
    records: dict[Hashable, Record | None] = {}

    def replayed(i: int, block: nn.Module, signature: Hashable) -> Callable[..., Any]:
        forward = block.forward

        def call(*args: Any, **kwargs: Any) -> Any:
            key = (signature, call_signature(args, kwargs))
            if records.get(key) is not None:
                def credit(nbytes: int, copy_: bool) -> None:
                    saved[("replay", i, len(saved))] = (nbytes, i, copy_)
                return replay(records[key], args, kwargs, pack, credit)
            if key in records:  # a kind that cannot be replayed
                return forward(*args, **kwargs)
            first, tracer.created = len(saved), set()
            try:
                result = forward(*args, **kwargs)
                new = [(k, n, c) for k, (n, _, c) in itertools.islice(saved.items(), first, None)]
                records[key] = record(result, args, kwargs, new, tracer.created)
            finally:
                tracer.created, tracer.held = None, []
            return result
        return call

    checkpointing = {m: m.__dict__["_gradient_checkpointing_func"] for m in model.modules()
                     if "_gradient_checkpointing_func" in m.__dict__}
    for m in checkpointing:
        m._gradient_checkpointing_func = _direct
    tied = _tied(model, blocks) if replay_blocks else set(range(len(blocks)))
    for i, b in enumerate(blocks):  # signatures before any hook or wrapper of the measurement is added
        if i not in tied:
            b.forward = replayed(i, b, block_signature(b))
    handles = [h for i, b in enumerate(blocks) for h in (b.register_forward_pre_hook(enter(i), with_kwargs=True),
                                                         b.register_forward_hook(leave))]
    try:
        with mode, tracer, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            b.__dict__.pop("forward", None)
        for m, fn in checkpointing.items():
            m._gradient_checkpointing_func = fn
    per_block = [sum(n for k, (n, b, _) in saved.items() if b == i and k not in inputs) for i in range(len(blocks))]
    outside = [n for k, (n, b, _) in saved.items() if b is None and k not in inputs]
    return Activations(per_block=per_block, outside=sum(outside), largest_outside=max(outside, default=0),
                       weight_copies=sum(n for n, b, copy_ in saved.values() if copy_ and b is not None),
                       block_inputs=sum(inputs.values()), total=sum(n for n, _, _ in saved.values()))
