"""The optimizer and learning-rate schedule of a run (``optim`` in conf/config.yaml): Hugging Face
``transformers.Trainer``'s recipe, built from transformers' own functions.

Every released training script the paper tables cite trains with ``transformers.Trainer`` (CapaBoost's run_glue.py
and run_qa.py through its ``AdapterTrainer``; DoRA/LLM-Adapters' finetune.py), so a run builds what
``Trainer.create_optimizer_and_scheduler`` builds for the same ``TrainingArguments``:

- two parameter groups over the tensors that require grad (``Trainer.create_optimizer``): ``optim.weight_decay`` on
  the names ``Trainer.get_decay_parameter_names`` returns, 0 on the others (biases, LayerNorm/RMSNorm weights);
- the optimizer (``optim.optimizer``): ``adamw_torch`` is ``torch.optim.AdamW`` (Trainer's ``optim="adamw_torch"``,
  DoRA's finetune.py); ``adamw_hf`` is :class:`LegacyAdamW`, the AdamW of transformers 4 that the CapaBoost scripts'
  ``AdapterTrainer`` builds;
- the schedule (``optim.schedule``): ``linear`` is ``transformers.get_scheduler("linear")``: the lr rises from 0 over
  the warm-up (step ``s`` at ``s / warmup``), then falls linearly to 0 at the end of the run; the warm-up is
  ``optim.warmup_steps``, or ``ceil(optim.warmup_ratio × steps)`` (``TrainingArguments.get_warmup_steps``);
- gradient clipping is Lightning's ``trainer.gradient_clip_val`` (norm), which matches
  ``TrainingArguments.max_grad_norm`` (1.0 by default, in every trainer config here).

A cell whose cited source trains otherwise follows its source, and its experiment file says so: SMT's official loop
(HectorHHZ/Sparse_Matrix_Tuning deepspeed/fine_tune.py) builds the same linear schedule with transformers'
``get_scheduler``, twice (a new one at its switch: :attr:`Schedule.origin`); NOAH's VTAB recipe is ``timm_cosine``
(:func:`timm_cosine_epoch_lrs`).

:func:`build_optimizer` and :func:`build_scheduler` are what ``PeftModule.configure_optimizers`` calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftlab.config_utils import require
from peftlab.run_config import OptimConfig


def decay_parameter_names(model: nn.Module) -> set[str]:
    """The parameters of ``model`` that HF Trainer decays: ``Trainer.get_decay_parameter_names`` (every parameter
    outside an ``nn.LayerNorm`` whose name has none of bias, layernorm, rmsnorm, norm). An instance method that reads no
    Trainer state, called here without a Trainer."""
    from transformers import Trainer  # noqa: PLC0415 - its import (accelerate, datasets) waits for the first build

    return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``Trainer.create_optimizer``'s two groups over the parameters that require grad: the decayed ones with
    ``weight_decay``, the others with 0 (either may be empty)."""
    decayed = decay_parameter_names(model)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in trained if n in decayed], "weight_decay": weight_decay},
            {"params": [p for n, p in trained if n not in decayed], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The run's optimizer over the parameters of ``model`` that require grad, at ``lr``: HF Trainer's parameter
    groups, ``config.optimizer`` (``adamw_torch`` or ``adamw_hf``) with ``config.betas`` and ``config.eps``."""
    cls = LegacyAdamW if config.optimizer == "adamw_hf" else torch.optim.AdamW
    return cls(parameter_groups(model, config.weight_decay), lr=lr, betas=tuple(config.betas), eps=config.eps)


@dataclass(frozen=True)
class Schedule:
    """Where the lr schedule built now lies in the run, in optimizer steps.

    ``total``: steps of the whole run; ``origin``: the step at which the current schedule began (0, or a method's
    switch that restarts it: SMT's block phase runs its own warm-up and decay over the remaining steps);
    ``position``: the updates the schedule had made when this scheduler is built (0, or, for a rebuild that keeps the
    schedule, LISA's draws, the steps its earlier schedulers took: updates, not optimizer steps, since a step the fp16
    loss scaler skips does not advance the schedule); ``warmup``: the
    method's own warm-up steps for this schedule, None for ``optim``'s; ``steps_per_epoch`` and ``epochs``: what an
    epoch-wise schedule (``timm_cosine``) counts in."""

    total: int
    origin: int = 0
    position: int = 0
    warmup: int | None = None
    steps_per_epoch: int = 1
    epochs: int = 1


def warmup_steps(config: OptimConfig, steps: int) -> int:
    """``optim.warmup_steps``, or ``ceil(optim.warmup_ratio × steps)``: HF ``TrainingArguments.get_warmup_steps``
    (``timm_cosine`` counts epochs the same way)."""
    return config.warmup_steps if config.warmup_steps is not None else math.ceil(config.warmup_ratio * steps)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per update; its step ``k`` gives the lr of update ``schedule.position + k`` of
    the schedule that began at ``schedule.origin``, so a rebuilt or resumed scheduler continues where it was
    (Lightning restores its step count on a resume). The factor comes from transformers' or timm's own schedule."""
    lr = optimizer.defaults["lr"]
    factor = _linear_factor(config, schedule) if config.schedule == "linear" else _timm_factor(config, schedule, lr)
    offset = schedule.position

    def shifted(step: int) -> float:  # a function: LambdaLR leaves it out of its state dict
        return factor(step + offset)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, shifted)


def _scratch_optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    """An optimizer over one scratch tensor, for a library's scheduler to act on (the run's is left alone)."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def _linear_factor(config: OptimConfig, schedule: Schedule) -> Callable[[int], float]:
    """``transformers.get_scheduler("linear")``'s factor over the steps from ``schedule.origin`` to the end."""
    from transformers import get_scheduler  # noqa: PLC0415

    steps = max(1, schedule.total - schedule.origin)
    warmup = schedule.warmup if schedule.warmup is not None else warmup_steps(config, steps)
    scheduler = get_scheduler("linear", _scratch_optimizer(), num_warmup_steps=warmup, num_training_steps=steps)
    return scheduler.lr_lambdas[0]


def _timm_factor(config: OptimConfig, schedule: Schedule, lr: float) -> Callable[[int], float]:
    """:func:`timm_cosine_epoch_lrs` as a factor of ``lr``, constant within an epoch."""
    lrs = timm_cosine_epoch_lrs(lr, config, schedule.epochs)
    return lambda step: lrs[min(step // schedule.steps_per_epoch, len(lrs) - 1)] / lr


def check_run(config: OptimConfig, epochs: int | None, restarts: bool) -> None:
    """Before training: what ``optim.schedule`` needs from the run. ``timm_cosine`` (epoch-wise, one schedule for the
    whole run) needs a number of epochs, and a method that does not restart the schedule mid-run (``restarts``: SMT's
    and SPT's switch)."""
    if config.schedule != "timm_cosine":
        return
    require(not restarts, "optim.schedule=timm_cosine is one epoch-wise schedule for the whole run, and this method "
            "starts a new schedule at its switch: use optim.schedule=linear")
    require(isinstance(epochs, int) and epochs >= 1, f"optim.schedule=timm_cosine counts in epochs: set task.epochs=N "
            f"(trainer.max_epochs is {epochs})")


def timm_cosine_epoch_lrs(lr: float, config: OptimConfig, epochs: int) -> list[float]:
    """The lr of every epoch under NOAH's VTAB recipe (ZhangYuanhan-AI/NOAH supernet_train_prompt.py): timm's
    ``CosineLRScheduler`` with the arguments ``timm.scheduler.create_scheduler`` gives it (``t_initial`` = the epochs,
    ``lr_min`` = ``optim.min_lr``, ``warmup_lr_init`` = ``optim.warmup_lr``, ``warmup_t`` = :func:`warmup_steps` of
    the epochs, one cycle), driven as that script drives it: epoch 0 at the lr the scheduler starts with, then
    ``lr_scheduler.step(epoch)`` after each epoch, so epoch ``e`` trains at the schedule's value at ``e - 1``."""
    from timm.scheduler import CosineLRScheduler  # noqa: PLC0415

    scratch = _scratch_optimizer(lr)
    scheduler = CosineLRScheduler(scratch, t_initial=epochs, lr_min=config.min_lr, cycle_limit=1, t_in_epochs=True,
                                  warmup_t=warmup_steps(config, epochs), warmup_lr_init=config.warmup_lr)
    lrs = [scratch.param_groups[0]["lr"]]
    for epoch in range(epochs - 1):
        scheduler.step(epoch)
        lrs.append(scratch.param_groups[0]["lr"])
    return lrs


class LegacyAdamW(torch.optim.Optimizer):
    """The AdamW of transformers 4 (``transformers.optimization.AdamW``, ``correct_bias=True``; no longer in
    transformers 5, hence this copy of its update): the optimizer the CapaBoost scripts' ``AdapterTrainer`` builds
    (LINs-lab/CapaBoost src/transformers/adapters/trainer.py ``create_optimizer``; its transformers is 4.21.3).

    With torch's moments ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²`` at step ``t``, it updates
    ``p ← p − lr·√(1−β2^t)/(1−β1^t) · m/(√v + eps)`` then ``p ← p − lr·wd·p``: eps is added before the bias
    correction (``torch.optim.AdamW``: ``m̂/(√v̂ + eps)``, i.e. eps/√(1−β2^t) here) and the decay applies to the
    updated weight (torch's decays first). The two differ where √v is near eps (small gradients, early steps)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss
