"""Training memory of any model × method × task, predicted without a GPU and without weights.

``python -m peftlab.budget model=llama_7b method=smt --memory batch=16 seq=256 precision=bf16-mixed
grad_checkpointing=true`` (see :mod:`peftlab.budget`) prints the split below for every phase of the method.

How each part is obtained (docs/memory.md):

- **States** are counted from the model the method builds, at the real shape, on fake tensors (shapes and
  dtypes, no memory): the backbone is built on the meta device as the budget calculator builds it, the method
  is applied exactly as a run applies it, and every parameter is counted with the dtype the precision rule
  gives it. The rule (``precision=bf16-mixed``, the GPU trainer): frozen weights stay in the model's load dtype
  (bf16 for the LLaMA configs), every trained tensor is an fp32 parameter, so its gradient is fp32 and AdamW
  keeps two fp32 moments (+ a 4-byte step count per tensor); there is no separate master copy (the fp32
  parameters are the master). ``16-mixed`` is the same layout under fp16 autocast. ``precision=bf16-master``
  is the DeepSpeed bf16 layout of the official SMT code (HectorHHZ/Sparse_Matrix_Tuning
  ``deepspeed/fine_tune.py``, ZeRO ``bf16``): every weight bf16, bf16 gradients, an fp32 master copy of the
  trained weights and fp32 Adam moments, no autocast.
- **Method state**: tensors the method adds as buffers (CapaBoost masks, SHiRA/SpIEL indices, SMT block
  coordinates) are counted from the model; tensors a method holds outside the model come from a per-method
  planner (:data:`PLANNERS`): SMT's fp32 warm-up gradient sums (on the device, or in CPU memory: the default
  on a GPU, as the official code), SPT's fp32 sensitivity sums, SpIEL's candidates, AdaLoRA's importance
  scores.
- **Activations** are not a formula: the training forward runs once on fake tensors of the real shape
  (``torch._subclasses.FakeTensorMode`` on the CPU device, so kernels such as the fused attention are chosen
  as on a real device) under ``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor saved for
  backward; storages are deduplicated and parameters and buffers excluded, as ``scripts/bench_methods.py``
  measures real runs. Each saved tensor is attributed to the transformer block that saved it (or to the
  embeddings/head/loss outside the blocks), and autocast's bf16 copies of trained fp32 weights are told apart.
  Without gradient checkpointing the activations are every saved tensor. With it, a block keeps only its
  inputs, autocast's weight copies live until the forward ends, and one block's activations come back while it
  is recomputed in backward.

Peak: the largest of four moments of a step, with S = weights + optimizer state + method state on the device:
end of forward (S + activations), start of backward (autocast copies freed; the loss backward holds two
more buffers the size of the largest tensor saved outside the blocks, the logits' log-softmax for a language
model), recompute of the largest block under checkpointing (S + block inputs + that block + all gradients), and
the optimizer step (S + gradients + AdamW's multi-tensor workspace, one fp32 copy of the trained parameters for
``torch._foreach_sqrt``, torch's default on CUDA; the largest trained tensor with ``foreach=false``). Allocator
caching, fragmentation, CUDA context and cuBLAS workspaces are not included.

Methods whose trained set depends on data (SMT's block selection, SPT's allocation) are predicted from the
state of a real run when one is given (``state=``: what ``Method.method_state()`` returns), else under a
stated assumption (see each planner's docstring).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from peftlab.budget import compose, meta_backbone, with_default_task
from peftlab.config_utils import require, to_dict
from peftlab.methods import build_method
from peftlab.methods.base import Method
from peftlab.methods.lisa import transformer_blocks
from peftlab.models import ModelSpec
from peftlab.train import validate_config

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


# --------------------------------------------------------------------------------------------------------------
# per-method planners: what the model alone does not show


@dataclass
class Phase:
    """What one phase of a method trains and holds, beyond the model's own parameters and buffers."""

    key: str  # "warmup" (the gradient phase) or "train"
    label: str
    held_device: int = 0  # bytes the method holds on the device
    held_cpu: int = 0  # bytes the method holds in CPU memory


Planner = Callable[[Method, nn.Module, MemorySetting, "dict[str, Any] | None", list[str]], Iterator[Phase]]
PLANNERS: dict[str, Planner] = {}


def planner(name: str) -> Callable[[Planner], Planner]:
    def register(fn: Planner) -> Planner:
        PLANNERS[name] = fn
        return fn

    return register


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
    then training with the plan of
    ``state`` or, without one, rank-r LoRA on the target matrices in module order until the budget is reached."""
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


# --------------------------------------------------------------------------------------------------------------
# fake tensors


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


# --------------------------------------------------------------------------------------------------------------
# the prediction


def _split(model: nn.Module, phase: Phase, probed: set[int], setting: MemorySetting, acts: Activations,
           backbone_buffers: int) -> Split:
    """The split of one phase; parameters carry the dtypes the precision rule gives them in this phase; ``probed``:
    ids of the parameters whose gradient the method sums and frees at once (never updated)."""
    params = list({id(p): p for p in model.parameters()}.values())
    trained = [p for p in params if p.requires_grad and id(p) not in probed]
    frozen = [p for p in params if not (p.requires_grad and id(p) not in probed)]
    trained_bytes = sum(p.numel() * p.itemsize for p in trained)
    s = Split(trainable=_numel(trained), frozen_weights=sum(p.numel() * p.itemsize for p in frozen) + backbone_buffers,
              trained_params=trained_bytes,
              master_copies=FP32 * _numel(trained) if setting.precision == "bf16-master" else 0,
              gradients=trained_bytes,
              optimizer_state=2 * FP32 * _numel(trained) + FP32 * len(trained),
              method_state=sum(b.numel() * b.itemsize for b in model.buffers()) - backbone_buffers + phase.held_device,
              offloaded=phase.held_cpu)
    if setting.grad_checkpointing:
        s.activations = acts.block_inputs + acts.outside + acts.weight_copies
    else:
        s.activations = acts.total
    if setting.optimizer_offload:  # DeepSpeed's CPU Adam: the master and the moments live and step in CPU memory
        s.offloaded += s.master_copies + s.optimizer_state
        s.master_copies = s.optimizer_state = 0
    states = s.frozen_weights + s.trained_params + s.master_copies + s.optimizer_state + s.method_state
    largest = max([p.numel() * FP32 for p in trained], default=0) if not setting.optimizer_offload else 0
    probe = max([p.numel() * p.itemsize for p in params if id(p) in probed], default=0)
    s.moments = {"end of forward": states + s.activations,
                 "start of backward": states + s.activations - acts.weight_copies + 2 * acts.largest_outside + probe,
                 "optimizer step": states + s.gradients + (FP32 * _numel(trained) if setting.foreach
                                                           and not setting.optimizer_offload else largest)}
    if setting.grad_checkpointing:
        s.moments["block recompute"] = (states + acts.block_inputs + max(acts.per_block, default=0) + s.gradients
                                        + probe)
    return s


def predict(spec: ModelSpec, method_node: DictConfig | dict[str, Any], head: str, num_labels: int | None,
            setting: MemorySetting, loss_fn: LossFn, make_batch: Callable[[nn.Module], Batch] | None = None,
            state: dict[str, Any] | None = None) -> Prediction:
    """Predicted training memory of ``spec`` with the method of ``method_node`` and the task head ``head``.

    ``loss_fn(model, batch)`` is the training loss (a task's ``loss``); ``make_batch(model)`` builds the batch
    (default :func:`example_batch`); ``state`` is a run's ``Method.method_state()`` to predict that run's
    structure (SMT's selected blocks, SPT's plan) instead of the planner's assumption.
    """
    base = meta_backbone(spec, head, num_labels)
    backbone_buffers = sum(b.numel() * b.itemsize for b in base.buffers())
    method = build_method(to_dict(method_node) if isinstance(method_node, DictConfig) else dict(method_node))
    with torch.device("meta"):
        model = method.apply(copy.deepcopy(base), spec).train()  # training mode, as the Lightning module sets it
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fakeify(model, mode)
    with mode:
        batch = make_batch(model) if make_batch else example_batch(model, head, setting, num_labels)
    plan = PLANNERS.get(method.name, _default_phases)
    notes: list[str] = []
    phases: dict[str, Split] = {}
    labels: dict[str, str] = {}
    load: dict[int, torch.dtype] = {}  # parameter id → load dtype
    for phase in plan(method, model, setting, state, notes):
        _fakeify(model, mode)  # tensors a planner's restructuring created for real
        params = {id(p): p for p in model.parameters()}
        load.update({i: p.dtype for i, p in params.items() if i not in load})
        # what the method probes in this phase (SMT's grad_only warm-up, SPT's sensitivity pass), as a run asks it
        probed = {id(p) for n, p in model.named_parameters() if n in method.probed_parameters(model)}
        trained = {i for i, p in params.items() if p.requires_grad and i not in probed}
        if setting.precision == "bf16-master":  # DeepSpeed bf16: the whole model in bf16
            _set_dtypes(model, dict.fromkeys(params, torch.bfloat16), mode)
        else:  # the precision rule: trained tensors fp32, frozen ones in their load dtype
            _set_dtypes(model, {i: torch.float32 if i in trained else load[i] for i in params}, mode)
        acts = measure_activations(model, batch, loss_fn, AUTOCAST.get(setting.precision), mode)
        phases[phase.key] = _split(model, phase, probed, setting, acts, backbone_buffers)
        labels[phase.key] = phase.label
        _set_dtypes(model, load, mode)  # load dtypes again before the next phase restructures the model
    inputs = ", ".join(f"{k} {'×'.join(map(str, v.shape))}" for k, v in batch.items() if v.dim() > 1)
    return Prediction(phases, labels, inputs, notes)


# --------------------------------------------------------------------------------------------------------------
# the budget calculator's --memory mode

SEQ_KEYS = ("cutoff_len", "max_length", "max_seq_length")  # the task options that bound a sequence's tokens
BOOLEANS = {"true": True, "false": False}
KINDS = {"frozen_weights": "frozen weights", "trained_params": "trained params", "master_copies": "fp32 master copies",
         "gradients": "gradients", "optimizer_state": "optimizer state (AdamW)", "method_state": "method state",
         "activations": "activations (end of forward)"}
GPUS = (24, 40, 80)  # GiB sizes of common GPUs


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides apart from the memory settings (``batch= seq= precision= grad_checkpointing= device=
    offload= foreach= optimizer_offload=``)."""
    keys = {f.name for f in dataclasses.fields(MemorySetting)}
    hydra, settings = [], {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in keys:
            settings[key] = value
        else:
            hydra.append(item)
    return hydra, settings


def memory_setting(cfg: DictConfig, settings: dict[str, str]) -> MemorySetting:
    """The settings given on the command line; the rest from the config: batch = ``task.batch_size``, seq = the
    task's ``cutoff_len``/``max_length``/``max_seq_length``, gradient checkpointing = ``model.gradient_checkpointing``;
    precision ``bf16-mixed`` and device ``cuda`` (the GPU trainer: SMT sums offloaded, AdamW foreach)."""
    values: dict[str, Any] = {"batch": cfg.task.get("batch_size"),
                              "seq": next((cfg.task[k] for k in SEQ_KEYS if cfg.task.get(k)), 1),
                              "grad_checkpointing": bool(cfg.model.get("gradient_checkpointing", False))}
    for key, text in settings.items():
        if key in ("batch", "seq"):
            require(text.isdigit(), f"{key}={text} is not an integer >= 1 (e.g. {key}=16)")
            values[key] = int(text)
        elif key in ("precision", "device"):
            values[key] = text
        else:
            require(text.lower() in BOOLEANS, f"{key}={text} is not a boolean: give {key}=true or {key}=false")
            values[key] = BOOLEANS[text.lower()]
    return MemorySetting(**values)


def predict_config(cfg: DictConfig, setting: MemorySetting) -> Prediction:
    """:func:`predict` for a composed project config (model × method × task), with the task's own loss."""
    spec, _, task = validate_config(cfg)
    return predict(spec, cfg.method, task.head, task.num_labels, setting, task.loss)


def report(overrides: list[str]) -> str:
    """``python -m peftlab.budget <overrides> --memory``: the prediction for the composed config, described."""
    hydra, settings = split_overrides(overrides)
    cfg = compose(with_default_task(hydra))
    setting = memory_setting(cfg, settings)
    return describe(cfg, setting, predict_config(cfg, setting))


def gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def fits(peak: int) -> str:
    """The GPU sizes of :data:`GPUS` a peak fits on (allocated bytes, one device), or "none"."""
    return ", ".join(f"{g}" for g in GPUS if peak <= g * GiB) or "none"


def describe(cfg: DictConfig, setting: MemorySetting, pred: Prediction) -> str:
    """The split per phase (GiB), the moment of each phase's peak, and the overall peak."""
    phases = list(pred.phases)
    checkpointing = "on" if setting.grad_checkpointing else "off"
    lines = [f"model={cfg.model.name} method={cfg.method.name} task={cfg.task.name}: {pred.inputs}, "
             f"{setting.precision}, gradient checkpointing {checkpointing}, "
             f"AdamW {'foreach' if setting.foreach else 'per tensor'}",
             f"{'GiB':34s}" + "".join(f"{pred.labels[p]:>22s}" for p in phases)]
    for kind, label in KINDS.items():
        lines.append(f"{label:34s}" + "".join(f"{gib(getattr(pred.phases[p], kind)):>22s}" for p in phases))
    for p in phases:
        s = pred.phases[p]
        moment = max(s.moments, key=lambda m: s.moments[m])
        lines.append(f"peak of {pred.labels[p]}: {gib(s.peak)} GiB at the {moment}"
                     + (f"; + {gib(s.offloaded)} GiB in CPU memory" if s.offloaded else ""))
    sizes = fits(pred.peak)
    lines.append(f"peak: {gib(pred.peak)} GiB (" + (f"fits one GPU of: {sizes} GiB)" if sizes != "none" else
                                                   f"fits none of the GPU sizes {', '.join(map(str, GPUS))} GiB)"))
    lines += [f"assumed: {n}" for n in pred.notes]
    return "\n".join(lines)
