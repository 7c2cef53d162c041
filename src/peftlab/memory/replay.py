"""Identical transformer blocks measured once: a block whose call is identical to one already run in the same
forward is replayed from that block's record instead of running its ops again.

The activation measurement (:mod:`peftlab.memory.activations`) runs the training forward on fake tensors, where
nothing depends on values: what a block saves for backward and what it returns are determined by its modules
(their classes, plain attributes, parameters' and buffers' shapes, strides, dtypes and ``requires_grad``, hooks)
and by its inputs' metadata. Two calls with equal :func:`signature` therefore save the same tensors, and a replay is
exact: each tensor the first call saved is credited again, as a new storage when the block created it, as the
replaying block's own input when it was an input (so shared inputs such as the rotary tables stay counted once),
and the outputs are new fake tensors of the recorded metadata. A LLaMA-7B forward then runs one block of each
distinct kind (e.g. two under SMT's spread selection, whose matrices hold 8 or 9 blocks) instead of 32.

What is treated as equal, and why that is exact:

- plain attributes are compared by value (numbers, strings, dtypes, containers of them, a real tensor by its
  metadata and a hash of its bytes, an object without state by its class), other objects by identity (the shared
  model config, the forward's cache object); a function by its code, closure and defaults;
- two attributes that name a module's place are left out (:data:`IGNORED`, as attributes and as keys of attribute
  dicts): ``layer_idx``, which transformers' attention layers use only to address the key/value cache
  (``past_key_values.update(..., self.layer_idx)``), whose per-layer entries start empty in a training forward (they
  read ``config.layer_types[layer_idx]`` at construction into attributes that are compared); and peft's
  ``kwargs["target_name"]`` (the adapted module's name), read when the layer is built (``LoraLayer.update_layer``),
  never by ``forward``;
- a block sharing a parameter with another module (ALBERT-style tied layers) is never replayed: autocast's weight
  copies and saved weights would be shared, not repeated;
- a block whose outputs are not tensors of their own storage (views, tensors created before it) or hold other
  objects is never replayed (it runs).
"""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

IGNORED = frozenset({"layer_idx", "target_name"})
_SKIP = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_state_dict_hooks",
                   "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"})


def storage_key(t: torch.Tensor) -> int:
    """Identity of the storage behind ``t`` (a fake tensor's data pointer is 0, so not that)."""
    return t.untyped_storage()._cdata


def tensor_meta(t: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(t.shape), t.stride() if t.layout == torch.strided else None, t.dtype, t.layout, t.device.type,
            t.requires_grad, t.storage_offset() if t.layout == torch.strided else None,
            t.untyped_storage().nbytes() if t.layout == torch.strided else None)


def freeze(value: Any, depth: int = 0) -> Hashable:
    """A hashable stand-in for ``value`` that is equal for two values a fake-tensor forward cannot tell apart."""
    if depth > 6:
        return ("deep", id(value))
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.dtype, torch.device,
                                           torch.Size, Enum)):
        return (type(value).__name__, value)
    if isinstance(value, torch.Tensor):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(value, FakeTensor) or value.is_meta:
            return ("tensor", tensor_meta(value))
        data = value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        return ("real", tensor_meta(value), hashlib.sha1(data).hexdigest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(freeze(v, depth + 1) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((freeze(k, depth + 1), freeze(v, depth + 1)) for k, v in value.items()
                              if k not in IGNORED))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(freeze(v, depth + 1)) for v in value)))
    if isinstance(value, functools.partial):
        return ("partial", freeze(value.func, depth + 1), freeze(value.args, depth + 1),
                freeze(value.keywords, depth + 1))
    if isinstance(value, types.FunctionType):
        cells = tuple(freeze(c.cell_contents, depth + 1) for c in value.__closure__ or ())
        return ("function", id(value.__code__), cells, freeze(value.__defaults__, depth + 1))
    if isinstance(value, types.MethodType):
        return ("method", freeze(value.__func__, depth + 1), id(value.__self__))
    if not getattr(value, "__dict__", True) and not getattr(type(value), "__slots__", ()):  # stateless: peft variants
        return ("stateless", type(value).__module__, type(value).__qualname__)
    return ("object", id(value))


def _module_signature(name: str, m: nn.Module) -> Hashable:
    attrs = tuple((k, freeze(v)) for k, v in m.__dict__.items() if k not in _SKIP and k not in IGNORED
                  and not k.endswith("_hooks") and not k.endswith("_hooks_with_kwargs")
                  and not k.endswith("_hooks_always_called"))
    hooks = tuple((k, freeze(list(v.values()))) for k, v in m.__dict__.items()
                  if (k.endswith("_hooks") or k.endswith("_hooks_with_kwargs")) and k not in _SKIP)
    tensors = tuple((k, None if t is None else tensor_meta(t)) for k, t in (*m._parameters.items(),
                                                                           *m._buffers.items()))
    cls = type(m)
    return (name, cls.__module__, cls.__qualname__, attrs, hooks, tensors)


def block_signature(block: nn.Module) -> Hashable:
    """The block's modules, compared as the module docstring says."""
    return tuple(_module_signature(name, m) for name, m in block.named_modules(remove_duplicate=False))


def call_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    """The inputs' structure, tensor metadata, which of them share a storage, and every other value (frozen)."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    alias: dict[int, int] = {}
    out = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            out.append(("tensor", tensor_meta(leaf), alias.setdefault(storage_key(leaf), len(alias)),
                        grad_kind(leaf)))
        else:
            out.append(freeze(leaf))
    return (str(spec), tuple(out))


def is_weight_copy(t: torch.Tensor) -> bool:
    """Whether ``t`` is (a view of) a cast of a leaf that requires grad: autocast's cached bf16 copy of an fp32
    weight (a linear layer saves its transpose)."""
    fn = (t._base if t._base is not None else t).grad_fn
    return (fn is not None and type(fn).__name__ == "ToCopyBackward0"
            and hasattr(fn.next_functions[0][0], "variable"))


def grad_kind(t: torch.Tensor) -> str:
    """What the measurement reads from a tensor's autograd history: a leaf, a weight copy, or another result."""
    if (t._base if t._base is not None else t).grad_fn is None:
        return "leaf"
    return "weight copy" if is_weight_copy(t) else "result"


@dataclass
class Record:
    """What the first call of a block kind saved and returned."""

    saved: list[tuple[str, int, int, bool]]  # (kind "new"/"input"/"output", leaf index or -1, bytes, weight copy)
    out_spec: Any  # pytree spec of the output
    outputs: list[tuple[str, Any]]  # per output leaf: ("input", index) | ("tensor", meta) | ("value", value)


def record(result: Any, args: tuple[Any, ...], kwargs: dict[str, Any], new: list[tuple[int, int, bool]],
           created: set[int]) -> Record | None:
    """The record of a block call that returned ``result`` and saved ``new`` storages ((key, bytes, weight copy), in
    order) first; ``created``: storages its ops allocated. None when the call cannot be replayed exactly."""
    in_keys: dict[int, int] = {}
    for i, leaf in enumerate(pytree.tree_leaves((args, kwargs))):
        if isinstance(leaf, torch.Tensor):
            in_keys.setdefault(storage_key(leaf), i)
    leaves, spec = pytree.tree_flatten(result)
    outputs: list[tuple[str, Any]] = []
    out_keys: dict[int, int] = {}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            key = storage_key(leaf)
            if key in in_keys and leaf.untyped_storage().nbytes() == leaf.numel() * leaf.itemsize:
                outputs.append(("input", in_keys[key]))
                continue
            own = (leaf.layout == torch.strided and leaf.is_contiguous() and leaf.storage_offset() == 0
                   and leaf.untyped_storage().nbytes() == leaf.numel() * leaf.itemsize)
            if not own or key not in created or key in out_keys or grad_kind(leaf) == "weight copy":
                return None
            out_keys[key] = i
            outputs.append(("tensor", (tuple(leaf.shape), leaf.dtype, leaf.requires_grad, grad_kind(leaf))))
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            outputs.append(("value", leaf))
        else:
            return None
    saved = []
    for key, nbytes, copy_ in new:
        if key in in_keys:
            saved.append(("input", in_keys[key], nbytes, copy_))
        elif key in out_keys:
            saved.append(("output", out_keys[key], nbytes, copy_))
        elif key in created:
            saved.append(("new", -1, nbytes, copy_))
        else:  # a storage made before the block and first saved by it: another block would not save it again
            return None
    return Record(saved, spec, outputs)


def replay(rec: Record, args: tuple[Any, ...], kwargs: dict[str, Any], save: Callable[[torch.Tensor], Any],
           credit: Callable[[int, bool], None]) -> Any:
    """The block call ``rec`` recorded, again for these inputs: ``save(t)`` for a saved input or output tensor,
    ``credit(bytes, weight_copy)`` for a storage the block created; returns the new outputs."""
    inputs = pytree.tree_leaves((args, kwargs))
    outs: list[Any] = []
    for kind, value in rec.outputs:
        if kind == "input":
            outs.append(inputs[value])
        elif kind == "value":
            outs.append(value)
        else:
            shape, dtype, grad, kind = value
            t = torch.empty(shape, dtype=dtype, requires_grad=grad)
            outs.append(t.clone() if kind == "result" else t)  # a result of an op, as the block's own output is
    for kind, index, nbytes, copy_ in rec.saved:
        if kind == "input":
            save(inputs[index])
        elif kind == "output":
            save(outs[index])
        else:
            credit(nbytes, copy_)
    return pytree.tree_unflatten(outs, rec.out_spec)
