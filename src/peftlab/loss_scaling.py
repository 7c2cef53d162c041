"""fp16 loss scaling (``trainer.precision=16-mixed``: torch's GradScaler inside Lightning's MixedPrecision plugin),
as the gradient readers and the lr schedule need it (docs/precision.md).

Lightning scales the loss before each backward pass and, at the optimizer step, unscales the optimizer's gradients
(``GradScaler.unscale_``, which records per device whether they held inf/NaN), calls ``on_before_optimizer_step``,
then ``GradScaler.step`` (skips ``optimizer.step`` when anything was recorded) and ``update`` (halves the scale after
a skipped step). HF Trainer, which the released SMT/CapaBoost/AdaLoRA scripts use, goes through the same GradScaler
and does not advance its lr scheduler on a skipped step (transformers 5.23 ``Trainer._inner_training_loop``:
``if not self.accelerator.optimizer_step_was_skipped: self.lr_scheduler.step()``, ``global_step`` advancing either
way); Lightning advances it.

- :func:`grad_scaler`: the run's enabled GradScaler, or None (bf16 and fp32 runs scale nothing).
- :func:`step_is_skipped`: at ``on_before_optimizer_step``, whether the scaler will skip this step, after adding the
  overflow of gradients read outside the optimizer (tensors probed in backward and freed there) to its record, so
  such an overflow skips the step and lowers the scale like one among the trained tensors. When no tensor of the
  optimizer received a gradient (SPT's sensitivity pass, SMT ``grad_only`` on a causal LM: only probed tensors),
  the record is empty and ``GradScaler.step`` would raise "No inf checks were recorded for this optimizer"; the
  record then gets the probes' flag alone (a zero when they were finite), so the step runs, updating nothing.

GradScaler keeps that record in ``_per_optimizer_states`` (``torch/amp/grad_scaler.py``; nothing public adds to it);
this module is the one place that reads and writes it (torch 2.14; tests/methods/test_loss_scaling.py runs the real
GradScaler through Lightning).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.amp.grad_scaler import OptState


def grad_scaler(trainer: Any) -> torch.amp.GradScaler | None:
    """The trainer's enabled loss scaler (``16-mixed``), else None."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled() else None


def loss_scale(trainer: Any) -> float | None:
    """The factor the next backward pass's gradients carry (None without loss scaling)."""
    scaler = grad_scaler(trainer)
    return None if scaler is None else float(scaler.get_scale())


def step_is_skipped(trainer: Any, optimizer: torch.optim.Optimizer, probes_overflow: bool) -> bool:
    """After the step's backward passes, before ``GradScaler.step``: whether the step is skipped (always False
    without loss scaling). ``probes_overflow``: a gradient read outside the optimizer held inf/NaN."""
    scaler = grad_scaler(trainer)
    if scaler is None:
        return False
    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:  # an optimizer that unscales inside its own step (fused): unscale here
        scaler.unscale_(optimizer)
    found = state["found_inf_per_device"]
    if probes_overflow or not found:
        scale = scaler._scale
        assert scale is not None  # set by the first scale() of the run
        flag = torch.full((), float(probes_overflow), dtype=torch.float32, device=scale.device)
        found[scale.device] = found[scale.device] + flag if scale.device in found else flag
    return bool(sum(v.item() for v in found.values()))
