"""Sparse Matrix Tuning (He et al., arXiv 2405.15525; official code HectorHHZ/Sparse_Matrix_Tuning).

Phases, run inside Lightning's ``fit``:
1. warm-up (``warmup_steps`` optimizer steps): ``warmup_mode=full`` fine-tunes the whole model, as the
   official code does, while the signed gradient of every eligible matrix (attention Q/K/V; MLP gate/up/down
   only with an MLP budget; never O) is summed in fp32. ``grad_only`` sums the same gradients without
   updating the backbone: each gradient is added to the sum and freed during backward, so the warm-up needs
   no gradient or optimizer memory for the backbone (a departure, offered because the official warm-up
   needs full-FT memory). The sums live on the CPU when ``offload_grad_sums`` (default: when the weights are on
   an accelerator), as the official code's ``grad.detach().cpu()``.
2. switch (``on_train_batch_end`` at ``warmup_steps``, returns True so the module rebuilds optimizer and
   schedule, with ``smt_lr``): blocks scored and chosen once (:mod:`.selection`), every selected matrix
   becomes a :class:`~.layer.BlockSparseLinear`, every other parameter freezes (the task head stays
   trainable when ``train_head``, needed for a randomly initialised classifier; the paper tunes LLMs whose
   LM head is pretrained and frozen). The new schedule has ``smt_lr_warmup_steps`` of warm-up (official
   default 0: linear decay from ``smt_lr`` over the remaining steps), not ``optim``'s; AdamW keeps
   ``optim.betas`` in both phases (official: (0.9, 0.95) in both).
3. block training; ``merge`` writes the blocks back into plain ``nn.Linear``.

A run whose warm-up is not shorter than the run fails before training (:meth:`check_total_steps`).

Where the gradients are read (:mod:`peftlab.methods.grad_probe`): ``full`` adds ``.grad`` of each eligible weight
(under ``optim.offload=true`` its fp32 CPU master's, :func:`peftlab.offload.gradient`) at every optimizer step
(``on_before_optimizer_step``: the step's gradient, summed over its micro-batches, unscaled, before clipping);
``grad_only`` reads each gradient in backward and frees it. Under fp16 loss scaling (``16-mixed``) a step the
scaler skips adds nothing (``grad_only`` divides by the loss scale and holds the step's
reads until its outcome is known), so the sums are those of the steps taken.

Several processes (DDP, docs/multi_gpu.md): the sums are of the gradient averaged over the processes, the sum one
process with the global batch computes, on every process: ``full`` reads ``.grad`` after DDP averaged it;
``grad_only`` averages each gradient in backward, on its device, before adding it (its weights are probed, not
trained: :meth:`probed_parameters`, DDP leaves them alone). No collective ever runs on the sums, which live in CPU
memory on a GPU machine, where NCCL (Lightning's GPU backend) cannot reduce. Every process checks that all selected
the same blocks (:func:`peftlab.distributed.assert_same`); the module re-wraps DDP around the blocks after the
switch.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import torch
from torch import nn

from peftlab import distributed, offload
from peftlab.config_utils import require
from peftlab.errors import ConfigError
from peftlab.methods import METHODS
from peftlab.methods.base import Method, freeze, named_targets, unfreeze_head
from peftlab.methods.grad_probe import GradientSums, ReadsGradients
from peftlab.methods.smt.config import (
    AUTO_WARMUP_SHARE,
    BLOCK_SIZES,
    PAPER_LR,
    PAPER_SMT_LR,
    PAPER_WARMUP_STEPS,
    PAPER_WIDTH,
    SmtConfig,
)
from peftlab.methods.smt.layer import BlockSparseLinear
from peftlab.methods.smt.selection import block_scores, budget_blocks, select_blocks
from peftlab.models import ModelSpec

log = logging.getLogger(__name__)


def two_d_numel(model: nn.Module) -> int:
    """Σ numel of every 2-D parameter (embeddings and head included), tied tensors once: the official
    denominator of the block ratio."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.dim() == 2 and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def layer_index(name: str) -> int | None:
    """The transformer-layer number in a module name (``...layers.3.self_attn.v_proj`` → 3)."""
    match = re.search(r"\.(\d+)\.", f".{name}.")
    return int(match.group(1)) if match else None


@METHODS.register("smt")
class SparseMatrixTuning(ReadsGradients, Method):
    config_cls = SmtConfig
    changes_trainable_set = True
    config: SmtConfig

    def __init__(self, config: SmtConfig) -> None:
        super().__init__(config)
        self.phase = "warmup"
        self.spec: ModelSpec | None = None
        self.pools: dict[str, dict[str, nn.Linear]] = {}  # pool → {module name: linear}
        self.budgets: dict[str, int] = {}  # pool → k blocks
        self.sums = GradientSums(offload=config.offloads)
        self.gate = self.sums.gate
        self.warmup_done = 0  # backward passes summed
        self.switched_at: int | None = None
        self.selection: dict[str, list[int]] = {}
        self.block_size = 0  # resolved from config.block_size (auto: the largest size dividing every matrix)
        # resolved from config.lr/smt_lr (apply: the model's width) and config.warmup_steps (check_total_steps: the
        # run's length); a number in the config is used as given
        self.lr, self.smt_lr = (None if v == "auto" else float(v) for v in (config.lr, config.smt_lr))
        self.warmup_steps = None if config.warmup_steps == "auto" else int(config.warmup_steps)
        self.grad_sums_memory: dict[str, int] = {}  # device type → bytes of the warm-up gradient sums
        self._hooks: list[Any] = []

    # ---------------- setup ----------------
    def eligible(self, model: nn.Module, spec: ModelSpec) -> dict[str, dict[str, nn.Linear]]:
        """Pool → eligible linears; resolves ``block_size`` (``auto``: the largest of 256, 128, ..., 8 dividing
        every eligible matrix; an explicit size must divide them all)."""
        pools: dict[str, dict[str, nn.Linear]] = {}
        for pool, (targets, _) in self.config.pool_targets.items():
            found = dict(named_targets(model, spec, targets))
            bad_type = [n for n, m in found.items() if not isinstance(m, nn.Linear)]
            require(not bad_type, f"SMT needs nn.Linear targets; {bad_type[:3]} are not")
            pools[pool] = found
        linears = {n: m for pool in pools.values() for n, m in pool.items()}
        sizes = [s for s in BLOCK_SIZES if all(m.out_features % s == 0 and m.in_features % s == 0
                                               for m in linears.values())]
        b = self.config.block_size
        if b == "auto":
            require(bool(sizes), f"no block size of {list(BLOCK_SIZES)} divides every eligible matrix "
                    f"({sorted({(m.out_features, m.in_features) for m in linears.values()})}); set method.block_size")
            self.block_size = sizes[0]
            return pools
        for name, m in linears.items():
            if m.out_features % b or m.in_features % b:
                raise ConfigError(f"method.block_size={b} does not divide {name} ({m.out_features}×{m.in_features}); "
                                  f"block sizes dividing every eligible matrix: {sizes or 'none of 256..8'}")
        self.block_size = int(b)
        return pools

    def plan_budgets(self, model: nn.Module) -> dict[str, int]:
        """Pool → number of blocks (for ``norm_dist``: of each matrix), checked against the eligible blocks."""
        c, b = self.config, self.block_size
        numel = two_d_numel(model)
        budgets: dict[str, int] = {}
        for pool, (_, value) in c.pool_targets.items():
            k = budget_blocks(c.budget_unit, value, b, numel)
            available = sum(m.weight.numel() // (b * b) for m in self.pools[pool].values())
            key = "budget" if pool != "mlp" else "mlp_budget"
            require(k >= 1, f"SMT {pool} budget {c.budget_unit}={value} gives 0 blocks of {b}×{b} on this model "
                    f"({numel:,} 2-D params); raise method.{key} or lower method.block_size")
            require(k <= available, f"SMT {pool} budget of {k} blocks ({k * b * b:,} params) exceeds the "
                    f"{available} eligible {b}×{b} blocks of {sorted({spec_type(n) for n in self.pools[pool]})}")
            if c.selection == "norm_dist":
                smallest = min(m.weight.numel() // (b * b) for m in self.pools[pool].values())
                require(k <= smallest, f"SMT selection=norm_dist takes the top {k} blocks of every matrix, but the "
                        f"smallest {pool} matrix has {smallest} blocks of {b}×{b}; lower method.{key} (e.g. "
                        f"method.budget_unit=blocks method.{key}={smallest})")
            budgets[pool] = k
        return budgets

    def planned_blocks(self) -> int:
        """Blocks the switch will select: Σ over pools of k (``norm_dist``: k × the pool's matrices)."""
        per_matrix = self.config.selection == "norm_dist"
        return sum(k * (len(self.pools[pool]) if per_matrix else 1) for pool, k in self.budgets.items())

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        self.spec = spec
        self.pools = self.eligible(model, spec)
        self.budgets = self.plan_budgets(model)
        if self.config.block_size == "auto":
            log.info(f"[peftlab] SMT: block_size=auto → {self.block_size} (the largest of {list(BLOCK_SIZES)} dividing "
                     f"every eligible matrix); {self.planned_blocks()} blocks planned")
        width = min(m.in_features for pool in self.pools.values() for m in pool.values())  # q/k/v/gate/up: hidden
        self.lr, self.smt_lr = self.config.resolve_lrs(width)
        if "auto" in (self.config.lr, self.config.smt_lr):
            log.info(f"[peftlab] SMT: lr={self.config.lr} → {self.lr:.3g}, smt_lr={self.config.smt_lr} → "
                     f"{self.smt_lr:.3g} (auto: the paper's LLaMA-7B {PAPER_LR:g} and {PAPER_SMT_LR:g} × "
                     f"{PAPER_WIDTH} / hidden size {width})")
        if self.config.warmup_mode == "full":
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            freeze(model)
            if self.config.train_head:
                unfreeze_head(model, spec)
        self._add_hooks()
        return model

    def planned_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        """Trainable parameters after the switch: k × block_size² (``norm_dist``: k × M × block_size²), + the
        task head when ``train_head``."""
        self.spec = spec
        self.pools = self.eligible(model, spec)
        self.budgets = self.plan_budgets(model)
        head = 0
        if self.config.train_head:
            head = sum(p.numel() for n, p in model.named_parameters()
                       if any(spec.is_head(m) for m in _prefixes(n)))
        return self.planned_blocks() * self.block_size**2 + head

    # ---------------- warm-up ----------------
    @property
    def grad_sums(self) -> dict[str, torch.Tensor]:
        """The fp32 warm-up gradient sum of each eligible matrix (module name → tensor)."""
        return self.sums.totals

    def _eligible_weights(self) -> dict[str, torch.Tensor]:
        return {name: m.weight for pool in self.pools.values() for name, m in pool.items()}

    def _add_hooks(self) -> None:
        if self.config.warmup_mode != "full":  # nothing updates the backbone; each gradient freed once summed
            weights = self._eligible_weights()
            for w in weights.values():
                w.requires_grad_(True)
            self._hooks = self.sums.hooks(weights, reduce=True)

    def on_before_optimizer_step(self, model: nn.Module, skipped: bool) -> None:
        """Warm-up: the step's reads count unless the loss scaler skipped the step; ``full`` adds ``.grad`` here."""
        if self.phase != "warmup":
            return
        if self.config.warmup_mode != "full":
            self.sums.end_step(skipped)
        elif not skipped:
            for name, w in self._eligible_weights().items():
                grad = offload.gradient(w)  # .grad, or its CPU master's under optim.offload=true
                if grad is not None:
                    self.sums.add(name, grad)

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def lr_warmup_steps(self) -> int | None:
        """The block phase: ``smt_lr_warmup_steps`` (official default 0: linear decay from ``smt_lr`` over the
        remaining steps); the warm-up phase follows ``optim``."""
        return self.config.smt_lr_warmup_steps if self.phase == "blocks" else None

    def check_total_steps(self, total_steps: int) -> None:
        """Resolves ``warmup_steps=auto`` from the run's optimizer steps, then checks that blocks get trained."""
        self.warmup_steps = self.config.resolve_warmup(total_steps)
        if self.config.warmup_steps == "auto":
            log.info(f"[peftlab] SMT: warmup_steps=auto → {self.warmup_steps} (the paper's {PAPER_WARMUP_STEPS}, at "
                     f"most {AUTO_WARMUP_SHARE:.0%} of the run's {total_steps} optimizer steps)")
        require(self.warmup_steps < total_steps, f"method.warmup_steps={self.warmup_steps} is not "
                f"shorter than the run's {total_steps} optimizer steps, so SMT would never train its blocks (the run "
                f"would be full fine-tuning); set method.warmup_steps below {total_steps} or train longer "
                "(task.epochs, trainer.max_steps)")

    def grad_sum_bytes(self) -> dict[str, int]:
        """Bytes of the warm-up gradient sums per device type (``cpu`` when offloaded; with the buffer of a step's
        reads under fp16 loss scaling, ``grad_only``)."""
        return self.sums.nbytes()

    def on_train_batch_end(self, model: nn.Module, step: int) -> bool:
        if self.phase == "warmup" and step >= self._warmup_steps():
            self.switch(model, step)
            return True
        return False

    def current_lr(self) -> float:
        lr = self.smt_lr if self.phase == "blocks" else self.lr
        require(lr is not None, "SMT's learning rates resolve when it is applied to a model (method.apply)")
        return lr

    def _warmup_steps(self) -> int:
        require(self.warmup_steps is not None, "method.warmup_steps=auto resolves from the run's length (inside "
                "train.py); outside a run set method.warmup_steps to a number")
        return self.warmup_steps

    def probed_parameters(self, model: nn.Module) -> set[str]:
        """``grad_only`` warm-up: the eligible weights, read and freed by the hooks, never updated."""
        if self.phase != "warmup" or self.config.warmup_mode == "full":
            return set()
        return {f"{name}.weight" for pool in self.pools.values() for name in pool}

    def warmup(self, model: nn.Module, batches: Any, loss_fn: Any = None) -> nn.Module:
        """Run the warm-up outside Lightning (tests, benchmarks): ``warmup_steps`` batches from ``batches``
        (each ``model(**batch).loss`` unless ``loss_fn(model, batch)``), AdamW at ``lr`` in full mode; then
        switch."""
        model.train()
        opt = None
        if self.config.warmup_mode == "full":
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.current_lr(),
                                    weight_decay=0.0)
        for step, batch in zip(range(1, self._warmup_steps() + 1), batches, strict=False):
            loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
            loss.backward()
            self.on_before_optimizer_step(model, skipped=False)
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            self.warmup_done = step
        return self.switch(model, self.warmup_done)

    gradient_phase = warmup  # the Method hook: this method's gradient phase

    # ---------------- switch ----------------
    def switch(self, model: nn.Module, step: int) -> nn.Module:
        """Score and select blocks once; convert the selected linears; freeze everything else."""
        c = self.config
        missing = [n for pool in self.pools.values() for n in pool if n not in self.grad_sums]
        require(not missing, f"SMT warm-up summed no gradient for {missing[:3]}: are they used by the forward?")
        selection: dict[str, list[int]] = {}
        for pool, k in self.budgets.items():
            scores = {n: block_scores(self.grad_sums[n], self.block_size, c.score) for n in self.pools[pool]}
            selection.update(select_blocks(scores, k, c.selection, c.selection_seed))
        distributed.assert_same("SMT's block selection", selection)
        self._remove_hooks()
        self.grad_sums_memory = self.grad_sum_bytes()
        self.sums.clear()
        self.switched_at = step
        self._convert(model, selection)
        counts = self.counts()
        log.info(f"[peftlab] SMT: {sum(len(v) for v in selection.values())} blocks of {self.block_size}² selected "
                 f"after {step} warm-up steps ({c.warmup_mode}); per type {counts['per_type']}; per layer "
                 f"{counts['per_layer']}")
        return model

    def _convert(self, model: nn.Module, selection: dict[str, list[int]]) -> None:
        for name, blocks in selection.items():
            module = model.get_submodule(name)
            require(isinstance(module, nn.Linear), f"SMT cannot convert {name}: not an nn.Linear")
            model.set_submodule(name, BlockSparseLinear(module, blocks, self.block_size))
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None  # warm-up gradients of now-frozen weights: free them
        for module in model.modules():
            if isinstance(module, BlockSparseLinear):
                module.smt_delta.requires_grad_(True)
        if self.config.train_head and self.spec is not None:
            unfreeze_head(model, self.spec)
        self.selection = {n: sorted(b) for n, b in selection.items()}
        self.phase = "blocks"

    # ---------------- record, persistence, deployment ----------------
    def counts(self) -> dict[str, dict[str, int]]:
        """Selected blocks per layer, per matrix type (q/k/v/...) and per matrix."""
        per_layer: Counter[str] = Counter()
        per_type: Counter[str] = Counter()
        for name, blocks in self.selection.items():
            per_layer[str(layer_index(name))] += len(blocks)
            per_type[spec_type(name, self.spec)] += len(blocks)
        return {"per_layer": dict(sorted(per_layer.items(), key=lambda kv: int(kv[0]) if kv[0] != "None" else -1)),
                "per_type": dict(sorted(per_type.items())),
                "per_matrix": {n: len(b) for n, b in self.selection.items()}}

    def method_state(self) -> dict[str, Any]:
        """JSON-ready: phase, selection (block indices per matrix) and its counts, for checkpoints and records."""
        state: dict[str, Any] = {"phase": self.phase, "block_size": self.block_size, "lr": self.lr,
                                 "smt_lr": self.smt_lr, "warmup_steps": self.warmup_steps,
                                 "budget_blocks": dict(self.budgets), "switched_at_step": self.switched_at,
                                 "grad_sums_bytes": self.grad_sum_bytes() if self.phase == "warmup"
                                 else dict(self.grad_sums_memory)}
        if self.phase == "blocks":
            state.update(selection=self.selection, counts=self.counts(),
                         trainable_block_params=sum(map(len, self.selection.values())) * self.block_size**2)
        return state

    def resume_state(self) -> dict[str, Any]:
        """During warm-up, the fp32 gradient sums so far (the same on every process), so a run resumed inside the
        warm-up selects the blocks an uninterrupted run selects."""
        if self.phase != "warmup":
            return {}
        return {"grad_sums": {n: self.grad_sums[n].detach().clone() for n in sorted(self.grad_sums)}}

    def load_resume_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        if self.phase == "warmup" and "grad_sums" in state:
            self.sums.clear()  # each sum moves where it belongs at its next addition
            self.grad_sums.update({n: g.to(dtype=torch.float32) for n, g in state["grad_sums"].items()})

    def load_method_state(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        if state.get("phase") != "blocks" or self.phase == "blocks":
            return model  # a warm-up checkpoint: warm-up goes on (gradient sums come from load_resume_state)
        require(state.get("block_size") == self.block_size,
                f"checkpoint used block_size {state.get('block_size')}, this run resolves {self.block_size}")
        self._remove_hooks()
        self.sums.clear()
        self.switched_at = state.get("switched_at_step")
        self.grad_sums_memory = dict(state.get("grad_sums_bytes", {}))
        self._convert(model, {n: list(b) for n, b in state["selection"].items()})
        return model

    def checkpoint_names(self, model: nn.Module) -> set[str]:
        """``warmup_mode=full`` changed every weight before the switch (the official code keeps those 100
        updates), so checkpoints and adapters must hold them; ``grad_only`` changed none."""
        if self.config.warmup_mode == "full":
            return {n for n, _ in model.named_parameters()}
        return set()

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Block updates Δ (k, b, b) and their block coordinates per matrix, plus the trainable head; with
        ``warmup_mode=full`` also every weight the warm-up changed (i.e. the whole model)."""
        state = super().adapter_state_dict(model)
        for name, p in model.named_parameters():
            if name in self.checkpoint_names(model):
                state[name] = p.detach().clone()
        for name, buf in model.named_buffers():
            if name.endswith((".smt_rows", ".smt_cols")):
                state[name] = buf.detach().clone()
        return state

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        """Load onto a base model with SMT applied; the block structure comes from the saved coordinates
        when :meth:`load_method_state` did not already rebuild it."""
        if self.phase != "blocks":
            selection: dict[str, list[int]] = {}
            for key, rows in state.items():
                if key.endswith(".smt_rows"):
                    name = key[: -len(".smt_rows")]
                    n_cols = model.get_submodule(name).in_features // self.block_size
                    selection[name] = (rows * n_cols + state[f"{name}.smt_cols"]).tolist()
            require(bool(selection), "SMT adapter state holds no block coordinates (*.smt_rows / *.smt_cols)")
            self._remove_hooks()
            self._convert(model, selection)
        return super().load_adapter_state_dict(model, state)

    def merge(self, model: nn.Module) -> nn.Module:
        """Every block-sparse linear back to a plain ``nn.Linear`` with W₀ + Δ (official end of training)."""
        self._remove_hooks()
        names = [n for n, m in model.named_modules() if isinstance(m, BlockSparseLinear)]
        for name in names:
            model.set_submodule(name, model.get_submodule(name).to_linear())
        return model


def spec_type(name: str, spec: ModelSpec | None = None) -> str:
    """Logical matrix type (q, k, v, gate...) of a module name; the last name component without a spec."""
    logical = spec.logical_name(name) if spec is not None else None
    return logical or name.rsplit(".", 1)[-1]


def _prefixes(param_name: str) -> list[str]:
    parts = param_name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
