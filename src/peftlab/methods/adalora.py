"""AdaLoRA (Zhang et al., ICLR 2023, arXiv 2303.10512) through HF ``peft``: CapaBoost's GLUE/SQuAD baseline.

Each target gets an SVD-shaped update W₀ + P Λ Q (Eq. 3): P ∈ R^{d_out×r}, Λ = diag(λ) ∈ R^{r},
Q ∈ R^{r×d_in}, r = ``init_r``; a regulariser ‖PᵀP − I‖² + ‖QQᵀ − I‖² (weight ``orth_reg_weight``) is
added to the loss by peft's forward; the importance of each triplet (Eq. 8–11, smoothed with β₁, β₂)
decides which λ's are masked, with the total rank budget decaying cubically from init_r·n to
target_r·n between ``tinit`` and ``total_step − tfinal`` (Eq. 12), every ``delta_t`` steps.

peft needs the run's total number of optimizer steps. ``total_step: null`` (default) takes it from the
trainer (``trainer.estimated_stepping_batches``, passed to :meth:`AdaLora.on_fit_start`); until then a
placeholder lets peft validate the schedule. ``update_and_allocate`` is called once after every optimizer
step (not after the other micro-batches of gradient accumulation), when the gradients it scores are still in
``.grad`` (Lightning zeroes them at the next step): the step's whole gradient, averaged over processes, unscaled.
After a step the fp16 loss scaler skipped (inf/NaN gradients) the importance update is left out, as the optimizer
update is; the final masking (``total_step − tfinal``) and the fixed masks after it read no gradient and still run.
The final rank pattern is method state: checkpoints keep it, and a load restores it before the tensors.
Parameter count: every target holds r·(d_in + d_out) + r (masked λ's keep their storage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import peft
from torch import nn

from peftlab.config_utils import (
    Dropout,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnit,
    PositiveFloat,
    PositiveInt,
    require,
)
from peftlab.methods import METHODS
from peftlab.methods.base import MethodConfig
from peftlab.methods.peft_wrapper import PeftMethod
from peftlab.models import ModelSpec


@dataclass
class AdaLoraConfig(MethodConfig):
    lr: PositiveFloat = 1e-3  # AdaLoRA Table 8: 5e-4 ... 2.2e-3 per GLUE task
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "up", "down"])  # AdaLoRA: all matrices
    init_r: PositiveInt = 12  # initial rank of every triplet set (1.5 × target_r in the paper's budgets)
    target_r: PositiveInt = 8  # average final rank
    alpha: PositiveFloat = 32.0  # scaling numerator (peft: the update is multiplied by alpha / r)
    dropout: Dropout = 0.0
    tinit: NonNegativeInt = 0  # steps before pruning starts (paper t_i)
    tfinal: NonNegativeInt = 0  # steps of final fine-tuning at a fixed budget (paper t_f)
    delta_t: PositiveInt = 1  # steps between budget reallocations (paper ΔT)
    beta1: OpenUnit = 0.85  # EMA of the sensitivity
    beta2: OpenUnit = 0.85  # EMA of its uncertainty
    orth_reg_weight: NonNegativeFloat = 0.1  # paper γ (Eq. 4, Table 8: 0.1 for most GLUE tasks)
    total_step: int | None = None  # null: the trainer's total number of optimizer steps

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.target_r < self.init_r,  # peft's allocator fails (kthvalue / KeyError) with nothing to prune
                f"method.target_r={self.target_r} must be below method.init_r={self.init_r} (AdaLoRA prunes "
                f"init_r - target_r ranks per matrix, and peft fails without one): set method.target_r below "
                f"{self.init_r}, or method=lora for a fixed rank")
        require(self.total_step is None or self.total_step > self.tinit + self.tfinal,
                f"method.total_step={self.total_step} leaves no budgeting phase after tinit={self.tinit} "
                f"and before tfinal={self.tfinal}")


@METHODS.register("adalora")
class AdaLora(PeftMethod):
    config_cls = AdaLoraConfig
    _skipped = False  # whether the loss scaler skipped the last optimizer step

    def peft_config(self, spec: ModelSpec, modules_to_save: list[str] | None) -> peft.AdaLoraConfig:
        c = self.config
        placeholder = c.tinit + c.tfinal + 1  # replaced in on_fit_start when total_step is null
        return peft.AdaLoraConfig(
            init_r=c.init_r,
            target_r=c.target_r,
            lora_alpha=c.alpha,
            lora_dropout=c.dropout,
            tinit=c.tinit,
            tfinal=c.tfinal,
            deltaT=c.delta_t,
            beta1=c.beta1,
            beta2=c.beta2,
            orth_reg_weight=c.orth_reg_weight,
            total_step=c.total_step or placeholder,
            target_modules=spec.target_regex(c.targets),
            modules_to_save=modules_to_save,
        )

    @staticmethod
    def _adalora_config(model: nn.Module) -> peft.AdaLoraConfig:
        return model.peft_config[model.active_adapter]

    def on_fit_start(self, model: nn.Module, total_steps: int) -> None:
        if self.config.total_step is not None:
            return
        c = self.config
        require(total_steps > c.tinit + c.tfinal,
                f"AdaLoRA: the run has {total_steps} optimizer steps, too few for tinit={c.tinit} + tfinal={c.tfinal}; "
                "lower them or train longer")
        self._adalora_config(model).total_step = total_steps  # the rank allocator reads this same object

    def on_before_optimizer_step(self, model: nn.Module, skipped: bool) -> None:
        self._skipped = skipped

    def on_train_batch_end(self, model: nn.Module, step: int) -> bool:
        cfg = self._adalora_config(model)
        if not (self._skipped and step < cfg.total_step - cfg.tfinal):  # skipped: inf gradients
            model.base_model.update_and_allocate(step)
        return False  # the λ's are masked in place; the trainable set does not change

    def apply(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        model = super().apply(model, spec)
        self._peft_cfg = self._adalora_config(model)  # method_state() reads the live schedule and rank pattern
        self._allocator = model.base_model.rankallocator  # resume_state() reads its sensitivity averages
        return model

    def resume_state(self) -> dict[str, Any]:
        """peft's RankAllocator sensitivity and uncertainty averages (Eq. 6-7 of the AdaLoRA paper): the
        budget allocation after a resume depends on them (docs/resume.md)."""
        alloc = getattr(self, "_allocator", None)
        if alloc is None:
            return {}
        return {key: {n: t.detach().clone() for n, t in getattr(alloc, key).items()}
                for key in ("ipt", "exp_avg_ipt", "exp_avg_unc")}

    def load_resume_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        alloc = getattr(self, "_allocator", None)
        device = next(model.parameters()).device
        for key, tensors in state.items():
            if alloc is not None:
                getattr(alloc, key).update({n: t.to(device) for n, t in tensors.items()})

    def method_state(self) -> dict[str, Any]:
        cfg = getattr(self, "_peft_cfg", None)
        return {} if cfg is None else {"rank_pattern": cfg.rank_pattern, "total_step": cfg.total_step}

    def load_method_state(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        """Restore the rank pattern (peft then prunes the loaded tensors to it) and the schedule length."""
        cfg = self._adalora_config(model)
        cfg.rank_pattern = state.get("rank_pattern")
        cfg.total_step = state.get("total_step") or cfg.total_step
        return model
