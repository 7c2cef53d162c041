"""Per-method planners: what a method holds or restructures that the model alone does not show."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from peftlab.config_utils import require
from peftlab.memory.states import FP32, MemorySetting
from peftlab.methods.base import Method
from peftlab.models import ModelSpec


@dataclass
class Phase:
    """What one phase of a method trains and holds, beyond the model's own parameters and buffers."""

    key: str  # "warmup" (the gradient phase) or "train"
    label: str
    held_device: int = 0  # bytes the method holds on the device
    held_cpu: int = 0  # bytes the method holds in CPU memory


F = TypeVar("F")


def _registrar(table: dict[str, F]) -> Callable[[str], Callable[[F], F]]:
    """``@decorator(name)`` that puts a function into ``table`` under the method's name."""

    def decorator(name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            table[name] = fn
            return fn

        return register

    return decorator


Planner = Callable[[Method, nn.Module, MemorySetting, "dict[str, Any] | None", list[str]], Iterator[Phase]]
PLANNERS: dict[str, Planner] = {}
planner = _registrar(PLANNERS)

Builder = Callable[[Method, nn.Module, ModelSpec], nn.Module]
# methods whose ``apply`` does real work that only reaches memory through a size: the memory model builds their model
# with the builder registered here instead of ``method.apply`` (the result has the same tensors: shapes, dtypes)
BUILDERS: dict[str, Builder] = {}
builder = _registrar(BUILDERS)


def _numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def spread_selection(pools: dict[str, dict[str, nn.Linear]], budgets: dict[str, int], block: int
                     ) -> dict[str, list[int]]:
    """SMT blocks when no real selection is given: each pool's k blocks dealt round-robin over its matrices (module
    order), each matrix's blocks on distinct column-blocks. For memory this is the worst case of a selection: a
    block on a new column-block of a matrix adds one saved input column-block (``BlockSparseLinear`` saves the
    input column-blocks its blocks read), and spreading puts every block on a new one."""
    selection: dict[str, list[int]] = {}
    for pool, k in budgets.items():
        linears = list(pools[pool].items())
        counts = [k // len(linears) + (i < k % len(linears)) for i in range(len(linears))]
        for (name, m), n in zip(linears, counts, strict=True):
            cols, rows = m.in_features // block, m.out_features // block
            if n:
                selection[name] = [(j // cols % rows) * cols + j % cols for j in range(n)]
    return selection


@builder("shira")
def _shira_support(method: Any, model: nn.Module, spec: ModelSpec) -> nn.Module:
    """SHiRA's random support (:func:`peftlab.methods.shira.independent_random_masks`) is drawn for real: a permutation
    of every target matrix and peft's ``torch.where`` over the dense mask, minutes at LLaMA-7B on a CPU. Only its
    size reaches memory (r·(d_in + d_out) trained values and their int32 (row, col) indices per matrix) and no fake
    op reads the indices' values, so the model is built without drawing one (peft's ``mask_fn=None``) and each layer
    gets indices of that size and dtype, all zero."""
    from peft.tuners.shira import ShiraLayer

    build = method.peft_config

    def without_support(*args: Any) -> Any:
        config = build(*args)
        config.mask_fn = None
        return config

    method.peft_config = without_support  # this prediction's method object only
    model = method.apply(model, spec)
    for layer in model.modules():
        if isinstance(layer, ShiraLayer):
            for adapter, weight in layer.shira_weight.items():
                layer.shira_indices[adapter] = torch.zeros(2, weight.numel(), dtype=torch.int, device="cpu")
    return model


def held_reads(setting: MemorySetting) -> int:
    """Copies of the sums a method reads in backward: 2 under fp16 loss scaling, where a step's reads are held
    apart until the scaler has not skipped it (peftlab.methods.grad_probe), else 1."""
    return 2 if setting.precision == "16-mixed" else 1


@planner("smt")
def _smt(method: Any, model: nn.Module, setting: MemorySetting, state: dict[str, Any] | None,
         notes: list[str]) -> Iterator[Phase]:
    """Warm-up (``warmup_mode=full``: full fine-tuning; ``grad_only``: the eligible weights are probed, nothing is
    updated) with the fp32 gradient sums of the eligible matrices (``grad_only`` under fp16 loss scaling: twice);
    then block training after the switch, with the selection of ``state`` or :func:`spread_selection`."""
    c = method.config
    eligible = [m.weight for pool in method.pools.values() for m in pool.values()]
    sums = FP32 * _numel(eligible) * (held_reads(setting) if c.warmup_mode == "grad_only" else 1)
    where = "in CPU memory" if setting.offload else "on the device"
    yield Phase("warmup", f"warm-up ({c.warmup_mode})", held_device=0 if setting.offload else sums,
                held_cpu=sums if setting.offload else 0)
    if state is None:
        selection = spread_selection(method.pools, method.budgets, method.block_size)
        notes.append(f"SMT: {sum(map(len, selection.values()))} blocks of {method.block_size}² spread over "
                     f"{len(selection)} matrices, distinct column-blocks (no run's selection given: the worst case "
                     f"for activations); warm-up gradient sums {where}")
    else:
        selection = {n: list(b) for n, b in state["selection"].items()}
    method.load_method_state(model, {"phase": "blocks", "block_size": method.block_size, "selection": selection})
    yield Phase("train", "block training")


@planner("spt_lora")
def _spt(method: Any, model: nn.Module, setting: MemorySetting, state: dict[str, Any] | None,
         notes: list[str]) -> Iterator[Phase]:
    """Sensitivity pass (every candidate probed, fp32 sums of grad² on the device; twice under fp16 loss scaling),
    then training with the plan of ``state`` or, without one, rank-r LoRA on the target matrices in module order
    until the budget is reached."""
    params = dict(model.named_parameters())
    candidates = [params[e.name] for e in method.entries]
    yield Phase("warmup", "sensitivity pass", FP32 * _numel(candidates) * held_reads(setting))
    if state is None:
        plan, total = {}, 0
        for e in method.entries:
            if e.lora is not None and total < method.config.budget:
                plan[e.name] = {"mode": "lora", "count": e.lora}
                total += e.lora
        state = {"phase": "tuned", "tau": None, "plan": plan}
        notes.append(f"SPT: LoRA rank {method.config.rank} on the first {len(plan)} target matrices "
                     f"({total:,} params; no run's allocation given)")
    # inside the model's fake mode: registering a parametrization evaluates W + B A once, which on B, A created
    # for real costs a real bf16 matmul per matrix (minutes at 7B); SPT's conversion has no data-dependent op
    with next(p for p in model.parameters() if isinstance(p, FakeTensor)).fake_mode:
        method.load_method_state(model, state)
    yield Phase("train", "training")


@planner("spiel")
def _spiel(method: Any, model: nn.Module, setting: MemorySetting, state: dict[str, Any] | None,
           notes: list[str]) -> Iterator[Phase]:
    """During gradient-collection windows SpIEL holds, per matrix with k deltas, k candidate positions (int64)
    and their fp32 gradient and squared-gradient sums (official ``gradient_accumulation_hook``); twice under fp16
    loss scaling (the step's own, until it is taken)."""
    ks = [m.spiel_values.numel() for m in method.layers.values()]
    yield Phase("train", "training", held_device=held_reads(setting) * sum(k * (8 + FP32 + FP32) + FP32 for k in ks))


@planner("adalora")
def _adalora(method: Any, model: nn.Module, setting: MemorySetting, state: dict[str, Any] | None,
             notes: list[str]) -> Iterator[Phase]:
    """peft's ``RankAllocator`` keeps three tensors per LoRA parameter during budgeting (``ipt``,
    ``exp_avg_ipt``, ``exp_avg_unc``), fp32 like the parameters under the precision rule."""
    lora = [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    yield Phase("train", "training", held_device=3 * FP32 * _numel(lora))


def _default_phases(method: Method, model: nn.Module, setting: MemorySetting, state: dict[str, Any] | None,
                    notes: list[str]) -> Iterator[Phase]:
    require(type(method).gradient_phase is Method.gradient_phase,
            f"the memory model has no planner for method '{method.name}', whose trained set is decided by a "
            "gradient phase: add one to peftlab.memory.PLANNERS")
    if state is not None:
        method.load_method_state(model, state)
    yield Phase("train", "training")
