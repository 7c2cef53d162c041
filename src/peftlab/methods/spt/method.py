"""SPT — Sensitivity-aware visual Parameter-efficient fine-Tuning (He et al., ICCV 2023, arXiv 2303.08566;
official code ziplab/SPT).

Phases, run inside Lightning's ``fit`` (the pattern of SMT's ``grad_only`` warm-up):
1. sensitivity (``sensitivity_batches`` = 16 training batches): the pre-trained model stays frozen and the
   fresh task head is not trained; S[w] = Σ_batches (∂L/∂w)² (first-order Taylor importance, official
   ``engine.get_sensitivity``) is summed for every candidate — the weights of the target Linears and, with
   ``vectors``, every 1-D parameter (biases, norm weights) — through :func:`~peftlab.methods.grad_probe.sum_gradients`,
   which frees each gradient at once. The head, embeddings (patch/position/token, cls) are never candidates
   (official: head and cls fully tuned, patch_embed/pos_embed frozen).
2. switch (``on_train_batch_end``; returns True so optimizer and schedule are rebuilt): global top-τ
   allocation under ``budget`` (:mod:`.allocation`), then each matrix gets a rank-``rank`` LoRA or a sparse
   delta on its selected entries, each vector is fully tuned or sparse (:mod:`.layers`); the mask is fixed.
3. training; ``merge`` folds every delta into W.

Departures: each LoRA A is drawn from a generator seeded by (``init_seed``, the tensor's name), not from the
global stream at the switch, so it is the same on every process and after a resume whatever the generators did
before; the budget counts the method's parameters (the head is extra; the official total adds 768 for
the cls token, which we do not tune); τ is searched on a geometric+linear grid, not 0.02M steps; timm's
fused ``qkv`` is ranked and given LoRA as one 3C×C matrix (LoRA cost r·4C) where the official model has
separate q/k/v Linears (3 × r·2C); only SPT-LoRA (no SPT-Adapter), LoRA without drop-path; the sparse
delta backward is dense in W's size (see :mod:`.layers`).

Several processes (DDP, docs/multi_gpu.md): each gradient is averaged over the processes before it is squared
(grad² of the global batch, as one process computes it; one all-reduce per candidate per backward, on the device),
the probed tensors stay out of DDP (:meth:`probed_parameters`; nothing else trains in this phase, so the module runs
unwrapped), every process checks that all allocated the same and hold the same trained tensors (values: the
re-wrap does not broadcast), and the module wraps DDP around the new tensors.

fp16 loss scaling (``16-mixed``): the squared gradients are of the unscaled loss, and a step the loss scaler skips
adds nothing (:mod:`peftlab.methods.grad_probe`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from peftlab import distributed
from peftlab.config_utils import require
from peftlab.methods import METHODS
from peftlab.methods.base import Method, freeze, head_module_names, keyed_generator, unfreeze_head
from peftlab.methods.grad_probe import GradientSums, ReadsGradients, squared
from peftlab.methods.module_selection import target_linears
from peftlab.methods.spt.allocation import Decision, Entry, allocate, max_cost
from peftlab.methods.spt.config import SptConfig
from peftlab.methods.spt.layers import LowRankDelta, SparseDelta
from peftlab.models import ModelSpec

EMBEDDING_WORDS = ("embed", "cls_token", "pos_embed")  # never candidates (official: frozen or fully tuned)

log = logging.getLogger(__name__)


@METHODS.register("spt_lora")
class SptLora(ReadsGradients, Method):
    config_cls = SptConfig
    changes_trainable_set = True
    config: SptConfig

    def __init__(self, config: SptConfig) -> None:
        super().__init__(config)
        self.phase = "sensitivity"
        self.spec: ModelSpec | None = None
        self.entries: list[Entry] = []
        self.reader = GradientSums(transform=squared)
        self.gate = self.reader.gate
        self.plan: dict[str, dict[str, Any]] = {}  # param name → {"mode", "count"}
        self.tau: int | None = None
        self._hooks: list[Any] = []

    # ---------------- setup ----------------
    def candidates(self, model: nn.Module, spec: ModelSpec) -> list[Entry]:
        """Ranked tensors in model order: target Linear weights (with their LoRA cost) and 1-D vectors."""
        r = self.config.rank
        entries = [Entry(f"{n}.weight", m.weight.numel(), r * (m.in_features + m.out_features))
                   for n, m in target_linears(model, spec, list(self.config.targets)).items()]
        if self.config.vectors:
            heads = tuple(f"{h}." for h in head_module_names(model, spec))
            entries += [Entry(n, p.numel(), None) for n, p in model.named_parameters()
                        if p.dim() == 1 and not n.startswith(heads) and not any(w in n for w in EMBEDDING_WORDS)]
        return entries

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        self.spec = spec
        self.entries = self.candidates(model, spec)
        most = max_cost(self.entries, self.config.alpha)
        require(self.config.budget <= most, f"method.budget={self.config.budget:,} exceeds the most SPT can tune "
                f"on model '{spec.name}' ({most:,}: every target matrix LoRA rank {self.config.rank}, every vector "
                "full); lower method.budget")
        freeze(model)  # the sensitivity phase updates nothing, not even the fresh head
        params = {e.name: model.get_parameter(e.name) for e in self.entries}
        for p in params.values():
            p.requires_grad_(True)
        self._hooks = self.reader.hooks(params, reduce=True)
        return model

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        """Sensitivity so far: Σ grad² per candidate (parameter name → tensor)."""
        return self.reader.totals

    def on_before_optimizer_step(self, model: nn.Module, skipped: bool) -> None:
        """Sensitivity phase: the step's squared gradients count unless the loss scaler skipped the step."""
        if self.phase == "sensitivity":
            self.reader.end_step(skipped)

    def probed_parameters(self, model: nn.Module) -> set[str]:
        """The sensitivity phase's candidates: their squared gradients are summed and freed, never applied."""
        return {e.name for e in self.entries} if self.phase == "sensitivity" else set()

    def planned_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        """The target (``budget``) plus the head; the realised count is the allocation closest to it (printed at
        the switch and recorded in ``method_state``)."""
        heads = tuple(f"{h}." for h in head_module_names(model, spec)) if self.config.train_head else ()
        return self.config.budget + sum(p.numel() for n, p in model.named_parameters() if heads and n.startswith(heads))

    # ---------------- sensitivity → switch ----------------
    def on_train_batch_end(self, model: nn.Module, step: int) -> bool:
        if self.phase == "sensitivity" and step >= self.config.sensitivity_batches:
            self.switch(model)
            return True
        return False

    def sensitivity(self, model: nn.Module, batches: Any, loss_fn: Any = None) -> nn.Module:
        """The sensitivity phase outside Lightning (tests, benchmarks): ``sensitivity_batches`` backward passes
        (``model(**batch).loss`` unless ``loss_fn(model, batch)``), then :meth:`switch`."""
        model.train()
        for _, batch in zip(range(self.config.sensitivity_batches), batches, strict=False):
            (loss_fn(model, batch) if loss_fn else model(**batch).loss).backward()
        return self.switch(model)

    gradient_phase = sensitivity  # the Method hook: this method's gradient phase

    def switch(self, model: nn.Module) -> nn.Module:
        missing = [e.name for e in self.entries if e.name not in self.sums]
        require(not missing, f"SPT summed no gradient for {missing[:3]}: are they used by the forward?")
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.tau, decisions = allocate(self.sums, self.entries, self.config.budget, self.config.alpha,
                                       self.config.beta)
        distributed.assert_same("SPT's allocation", {n: (d.mode, d.indices) for n, d in decisions.items()})
        self.reader.clear()
        self._convert(model, decisions)
        # DDP re-wraps without a broadcast: every process must start the tuned phase from the same values
        distributed.assert_same("SPT's trained tensors at the switch",
                                {n: p for n, p in model.named_parameters() if p.requires_grad})
        modes = {m: sum(1 for v in self.plan.values() if v["mode"] == m) for m in ("lora", "sparse", "full")}
        log.info(f"[peftlab] SPT: tau={self.tau:,} → {self.tuned_count():,} tuned params (target "
                 f"{self.config.budget:,}); tensors per mode {modes}")
        return model

    def _convert(self, model: nn.Module, decisions: dict[str, Decision]) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.plan = {}
        for name, d in decisions.items():
            module_name, _, tensor = name.rpartition(".")
            module = model.get_submodule(module_name)
            w = getattr(module, tensor)
            if d.mode == "full":
                w.requires_grad_(True)
            elif d.mode == "lora":
                parametrize.register_parametrization(module, tensor, LowRankDelta(
                    w.shape[0], w.shape[1], self.config.rank, w.dtype, w.device,
                    keyed_generator(self.config.init_seed, name)))
            else:
                parametrize.register_parametrization(module, tensor, SparseDelta(
                    w.shape, d.indices, w.dtype, w.device))  # type: ignore[arg-type]
            self.plan[name] = {"mode": d.mode, "count": d.cost(next(e for e in self.entries if e.name == name))}
        for m in model.modules():
            if isinstance(m, (SparseDelta, LowRankDelta)):
                for p in m.parameters():
                    p.requires_grad_(True)
        if self.config.train_head and self.spec is not None:
            unfreeze_head(model, self.spec)
        self.phase = "tuned"

    def tuned_count(self) -> int:
        return sum(v["count"] for v in self.plan.values())

    # ---------------- persistence, deployment ----------------
    def method_state(self) -> dict[str, Any]:
        """JSON-ready: phase, τ, realised count and per-tensor mode/count (the indices travel as buffers)."""
        return {"phase": self.phase, "tau": self.tau, "budget": self.config.budget,
                "tuned_params": self.tuned_count(), "plan": self.plan}

    def load_method_state(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        if state.get("phase") != "tuned" or self.phase == "tuned":
            return model  # a sensitivity-phase checkpoint: the phase restarts
        return self._rebuild(model, {n: (v["mode"], v["count"]) for n, v in state["plan"].items()}, state.get("tau"))

    def _rebuild(self, model: nn.Module, plan: dict[str, tuple[str, int]], tau: int | None) -> nn.Module:
        """Structure from a saved plan; sparse indices are placeholders until the state dict fills them."""
        for h in self._hooks:
            h.remove()
        self._hooks, self.tau = [], tau
        self.reader.clear()
        decisions = {n: Decision(mode, torch.zeros(count, dtype=torch.long) if mode == "sparse" else None)
                     for n, (mode, count) in plan.items()}
        self._convert(model, decisions)
        return model

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Trained tensors (LoRA A/B, sparse values, full vectors, head) and the sparse indices."""
        state = super().adapter_state_dict(model)
        state.update({n: b.detach().clone() for n, b in model.named_buffers() if n.endswith(".spt_index")})
        return state

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        """Onto a model with SPT applied; without :meth:`load_method_state` the plan is read from the keys."""
        if self.phase != "tuned":
            plan: dict[str, tuple[str, int]] = {}
            for key, value in state.items():
                owner, sep, rest = key.partition(".parametrizations.")
                if sep and rest.endswith(".0.spt_index"):
                    plan[f"{owner}.{rest.split('.')[0]}"] = ("sparse", value.numel())
                elif sep and rest.endswith(".0.lora_A"):
                    plan[f"{owner}.{rest.split('.')[0]}"] = ("lora", 0)
                elif not sep and key in {e.name for e in self.entries}:
                    plan[key] = ("full", value.numel())
            require(bool(plan), "SPT adapter state holds no SPT tensors (lora_A, spt_index/spt_values, vectors)")
            self._rebuild(model, plan, None)
        return super().load_adapter_state_dict(model, state)

    def merge(self, model: nn.Module) -> nn.Module:
        """W ← W + Δ for every parametrized tensor (exact); the model is the base architecture again."""
        for module in list(model.modules()):
            if parametrize.is_parametrized(module):
                for tensor in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
        return model
