"""SpIEL — sparse fine-tuning with dynamic indices (Ansell et al., "Scaling Sparse Fine-Tuning to Large
Language Models", arXiv 2401.16405; official code AlanAnsell/peft, ``src/peft/tuners/sft/``).

Implements SpIEL-AG (accumulated gradients, official ``selection_algorithm="rigl"``):

- every target Linear holds a sparse delta (:class:`~.layer.SparseDeltaLinear`): k random positions, values 0.
  k: ``int(density · all model parameters)`` (or ``num_tunable_weights``) spread over the targets in
  proportion to their size, ``k_m = int(N · numel_m / Σ numel)`` (official ``SftModel``);
- schedule (official ``SftSelector.step``, R = ``reselection_steps``, A = ``selection_accumulation_steps``,
  steps 1-based): gradients are collected in the backward passes of steps 1..A and of steps s ≥ R with
  s mod R ∈ [0, A]; after step s with s mod R = A (and s ≤ T) the deltas are reselected;
- collection (official ``gradient_accumulation_hook``): at a window's first backward, the k positions with the
  largest |∂L/∂W| become the candidates; their gradient and squared gradient are summed over the window;
- reselection (official ``select_rigl``) with rate p = 1 at step A (the random start is fully replaced),
  else ``initial_reselection_rate · (1 − s/T)`` (linear) or ``· (1 + cos(πs/T))/2`` (cosine): DROP the
  ⌊p·k⌋ deltas with the smallest |value|, GROW as many not-remaining candidates with the largest |summed
  gradient| (value 0); a position both dropped and grown simply stays;
- Adam moments of a grown slot are seeded with the candidate's mean gradient and mean squared gradient,
  "bias counter-corrected" so that Adam's bias correction returns them: m = ḡ·(1 − β₁ᵗ), v = ḡ²·(1 − β₂ᵗ).

The trainable tensors never change identity (k is fixed per matrix), so ``on_train_batch_end`` returns
False and the optimizer and schedule keep running; the moments of the moved slots are rewritten in place by
a one-shot ``torch.optim`` global step pre-hook at the next optimizer step (the method's hooks are never
handed the optimizer). Merge: W₀ + ΔW. Save: indices + values. Resume: indices are buffers (in every
checkpoint), the step counter is :meth:`Spiel.method_state` (plain JSON: run records and exports keep it), the
in-flight candidate sums and the moments waiting to be seeded (a checkpoint taken at a reselection step: the next
step seeds them) are :meth:`Spiel.resume_state` (tensors, checkpoints only), so a resume is exact at every step.

fp16 loss scaling (``16-mixed``): the collection hook reads the gradient of the unscaled loss and holds what it
read during a step until the step's outcome is known (:class:`~peftlab.methods.grad_probe.StepGate`): a step the
loss scaler skips adds nothing, and the window's candidates come from its first step that was taken.

Departures: the official SftAdamW keeps a per-entry "age" and counter-corrects with it; torch's AdamW has one
step count per tensor, so we counter-correct with that count t (the seeded moments are then unbiased at once);
the dense-delta layer (see :mod:`.layer`) instead of the CUDA sparse kernel; SpIEL-MA (SM3 growth) is not
implemented; on 4-bit bases (qSpIEL) — not supported here.

Several processes (DDP, docs/multi_gpu.md): the collection hook averages each dense gradient over the processes
before reading it (one weight-sized all-reduce per target matrix per backward of a collection window, inside
backward), so the candidates and their sums are those of the global batch on every process; the values are
averaged by DDP, so drop/grow decides identically everywhere, which :meth:`reselect` checks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from peftlab import distributed
from peftlab.config_utils import require
from peftlab.methods import METHODS
from peftlab.methods.base import Method, count_parameters, freeze, named_targets, unfreeze_head
from peftlab.methods.delta_linear import merge_delta_linears
from peftlab.methods.grad_probe import ReadsGradients, StepGate
from peftlab.methods.spiel.config import SpielConfig
from peftlab.methods.spiel.layer import SparseDeltaLinear
from peftlab.models import ModelSpec

Candidates = list[torch.Tensor]  # [positions, Σ grad, Σ grad², samples (scalar tensor)]


def deltas_per_matrix(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Official allocation: ``total`` tunable weights spread over matrices in proportion to their size."""
    weights = sum(sizes.values())
    require(total <= weights, f"SpIEL: {total:,} tunable weights exceed the {weights:,} weights of the targets")
    return {name: int(total * numel / weights) for name, numel in sizes.items()}


@METHODS.register("spiel")
class Spiel(ReadsGradients, Method):
    config_cls = SpielConfig
    config: SpielConfig

    def __init__(self, config: SpielConfig) -> None:
        super().__init__(config)
        self.step = 0  # optimizer steps completed
        self.total_steps = 0  # T
        self.candidates: dict[str, Candidates] = {}
        self.gate = StepGate()
        self._held: dict[str, Candidates] = {}  # this step's reads under loss scaling, until the step is taken
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # id(values) → seeds
        self._handle: Any = None
        self.layers: dict[str, SparseDeltaLinear] = {}

    # ---------------- setup ----------------
    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        c = self.config
        freeze(model)
        found = dict(named_targets(model, spec, c.targets))
        bad = [n for n, m in found.items() if not isinstance(m, nn.Linear)]
        require(not bad, f"SpIEL needs nn.Linear targets; {bad[:3]} are not")
        total = c.num_tunable_weights or int(count_parameters(model)[1] * c.density)  # official: all parameters
        require(total >= 1, f"SpIEL: density {c.density} gives 0 tunable weights; raise method.density")
        ks = deltas_per_matrix({n: m.weight.numel() for n, m in found.items()}, total)
        generator = torch.Generator().manual_seed(c.seed)
        for name, k in ks.items():
            if k > 0:
                model.set_submodule(name, SparseDeltaLinear(found[name], k, generator))
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, SparseDeltaLinear)}
        require(bool(self.layers), f"SpIEL: {total} tunable weights give no target a single delta")
        if c.train_head:
            unfreeze_head(model, spec)
        return model

    # ---------------- schedule ----------------
    def collects(self, step: int) -> bool:
        """Whether the backward pass of (1-based) optimizer step ``step`` gathers candidate gradients."""
        r, a = self.config.reselection_steps, self.config.selection_accumulation_steps
        return step <= a or (step >= r and step % r <= a)

    def reselection_rate(self, step: int) -> float | None:
        """The fraction p of deltas replaced after step ``step``; None when no reselection happens then."""
        c = self.config
        r, a = c.reselection_steps, c.selection_accumulation_steps
        if step % r != a or (self.total_steps and step > self.total_steps):  # official: none past T
            return None
        t = step / self.total_steps if self.total_steps else 0.0
        if c.reselection_rate_policy == "cosine":
            return c.initial_reselection_rate * (1 + math.cos(math.pi * t)) / 2
        return 1.0 if step == a else c.initial_reselection_rate * (1 - t)

    def on_fit_start(self, model: nn.Module, total_steps: int) -> None:
        self.total_steps = total_steps
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, SparseDeltaLinear)}
        self._set_collection(self.collects(self.step + 1))

    def on_before_optimizer_step(self, model: nn.Module, skipped: bool) -> None:
        """The step's held reads join the window's candidates, unless the loss scaler skipped the step."""
        held, self._held = self._held, {}
        if skipped:
            return
        for name, (positions, sums, squares, samples) in held.items():
            known = self.candidates.get(name)
            if known is None:
                self.candidates[name] = [positions, sums, squares, samples]
            else:
                known[1] += sums
                known[2] += squares
                known[3] += samples

    def on_train_batch_end(self, model: nn.Module, step: int) -> bool:
        self.step = step
        p = self.reselection_rate(step)
        if p is not None and self.candidates:
            self.reselect(p)
        if not self.collects(step + 1):
            self.candidates = {}
        self._set_collection(self.collects(step + 1))
        return False  # same tensors: the optimizer keeps running; moved slots are reseeded in place

    # ---------------- candidate gradients ----------------
    def _set_collection(self, on: bool) -> None:
        for name, layer in self.layers.items():
            layer.grad_hook = self._collector(name) if on else None

    def _collector(self, name: str) -> Any:
        @torch.no_grad()
        def collect(grad: torch.Tensor) -> None:
            g = self.gate.read(distributed.mean(grad.reshape(-1)))  # the global batch's, unscaled, fp32
            into = self._held if self.gate.held else self.candidates
            if name not in into:
                known = self.candidates.get(name)
                if known is not None:
                    positions = known[0]
                else:  # first backward of the window: the k largest |∂L/∂W| are the candidates
                    k = self.layers[name].spiel_values.numel()
                    positions = torch.topk(g.abs(), k, largest=True, sorted=False).indices
                into[name] = [positions, g.new_zeros(positions.shape), g.new_zeros(positions.shape), g.new_zeros(())]
            positions, sums, squares, samples = into[name]
            new = g[positions]
            sums += new
            squares.addcmul_(new, new)
            samples += 1

        return collect

    # ---------------- drop / grow ----------------
    @torch.no_grad()
    def reselect(self, p: float) -> int:
        """Drop ⌊p·k⌋ smallest-|value| deltas per matrix and grow the best candidates; returns #moved."""
        moved = 0
        for name, (positions, sums, squares, samples) in self.candidates.items():
            layer = self.layers[name]
            values, indices = layer.spiel_values, layer.spiel_indices
            numel = layer.in_features * layer.out_features
            n = int(values.numel() * p)
            if n == 0:
                continue
            slots = torch.topk(values.abs(), n, largest=False, sorted=True).indices  # smallest |value| first
            outgoing = indices[slots]
            is_outgoing = torch.zeros(numel, dtype=torch.bool, device=indices.device)
            is_outgoing[outgoing] = True
            is_remaining = torch.zeros_like(is_outgoing)
            is_remaining[indices] = True
            is_remaining &= ~is_outgoing
            valid = ~is_remaining[positions]
            cand, cand_sums, cand_squares = positions[valid], sums[valid], squares[valid]
            best = torch.topk(cand_sums.abs(), min(n, cand.numel()), largest=True, sorted=True).indices
            incoming, grads, grads_sq = cand[best], cand_sums[best], cand_squares[best]
            is_incoming = torch.zeros_like(is_outgoing)
            is_incoming[incoming] = True
            slots = slots[~is_incoming[outgoing]]  # dropped and grown again: the delta simply stays
            keep = ~is_outgoing[incoming]
            incoming, grads, grads_sq = incoming[keep], grads[keep], grads_sq[keep]
            slots = slots[: incoming.numel()]
            indices[slots] = incoming.to(indices.dtype)
            values[slots] = 0.0
            self.pending[id(values)] = (slots, grads / samples, grads_sq / samples)
            moved += int(slots.numel())
        self.candidates = {}
        distributed.assert_same("SpIEL's drop/grow", {n: m.spiel_indices for n, m in self.layers.items()})
        if self.pending and self._handle is None:
            self._handle = register_optimizer_step_pre_hook(self._seed_moments)
        return moved

    @torch.no_grad()
    def _seed_moments(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Global optimizer pre-hook, once: write the grown slots' Adam moments (official ``update_optimizer``)."""
        ours = False
        for group in optimizer.param_groups:
            betas = group.get("betas")
            for param in group["params"]:
                seeds = self.pending.get(id(param))
                ours |= seeds is not None
                state = optimizer.state.get(param, {})
                if seeds is None or betas is None or "exp_avg" not in state:
                    continue  # a fresh or non-Adam optimizer: nothing to seed
                slots, mean, mean_sq = seeds
                t = float(state["step"])
                state["exp_avg"][slots] = (mean * (1 - betas[0] ** t)).to(state["exp_avg"].dtype)
                state["exp_avg_sq"][slots] = (mean_sq * (1 - betas[1] ** t)).to(state["exp_avg_sq"].dtype)
        if not ours:  # another optimizer of the process stepped: wait for ours
            return
        self.pending = {}
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ---------------- persistence and deployment ----------------
    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = super().adapter_state_dict(model)  # values (and the head)
        state.update({n: b.clone() for n, b in model.named_buffers() if n.endswith("spiel_indices")})
        return state

    def method_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_method_state(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        self.step = int(state.get("step", 0))
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, SparseDeltaLinear)}
        return model

    def resume_state(self) -> dict[str, Any]:
        """The candidates and gradient sums of a collection window in flight, and the Adam moments of grown slots
        that the next optimizer step seeds (by layer name)."""
        names = {id(m.spiel_values): n for n, m in self.layers.items()}
        return {"candidates": {n: [t.clone() for t in c] for n, c in self.candidates.items()},
                "pending": {names[i]: [t.clone() for t in seeds] for i, seeds in self.pending.items()}}

    def load_resume_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.candidates = {n: [t.clone() for t in c] for n, c in state.get("candidates", {}).items()}
        self.pending = {id(self.layers[n].spiel_values): tuple(t.clone() for t in seeds)  # type: ignore[misc]
                        for n, seeds in state.get("pending", {}).items()}
        if self.pending and self._handle is None:
            self._handle = register_optimizer_step_pre_hook(self._seed_moments)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_delta_linears(model)

    def extra_counts(self, model: nn.Module) -> dict[str, Any]:
        return {"deltas": sum(m.spiel_values.numel() for m in model.modules() if isinstance(m, SparseDeltaLinear))}
