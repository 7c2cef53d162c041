"""One LightningModule for every method × task.

It asks the task for loss, predictions and metrics, and the method for its training-time hooks;
it never branches on either. Optimizer and schedule: HF Trainer's recipe over the trainable parameters only
(:mod:`peftlab.optim`: AdamW, no decay on biases and norm weights, linear warm-up then linear decay); the trained
parameters are cast to fp32 first, every time the optimizer is built (the precision rule, :mod:`peftlab.precision`).
Checkpoints hold only the trainable parameters, buffers and the method's structural state, so a PEFT checkpoint is
small and reloads onto the base model.

Exact resume (docs/resume.md): a checkpoint also holds the method's resume state (e.g. SMT's warm-up
gradient sums), the step at which the current optimizer and schedule were built, the best validation value,
the python/numpy/torch RNG states (restored just before the first batch after a resume, so dropout draws
the uninterrupted stream) and the run's config, which a resume must match. The method's per-step hook runs
in a callback placed before Lightning's ModelCheckpoint, so a checkpoint taken at step ``s`` already holds
what the method did at ``s`` (e.g. SMT's switch to blocks).

Several processes (docs/multi_gpu.md): every process evaluates its share of whole batches and the outputs are
gathered (:func:`peftlab.distributed.gather_batches`) before the task computes metrics, so every process logs
the whole set's metrics and ``val/<main>_best`` is global; when the method changes its trainable tensors the DDP
wrapper is rebuilt around the new ones (:func:`peftlab.distributed.follow_trainable_set`); a resume must use
the world size the checkpoint was trained with (the data order depends on it).

Optimizer steps: the method's per-step hooks run once per optimizer step, never between the micro-batches of
gradient accumulation (Lightning calls its batch-end hooks after every micro-batch). Under fp16 loss scaling
(``16-mixed``, :mod:`peftlab.loss_scaling`) the method learns the loss scale before each backward pass and, before
the update, whether the scaler skips the step; the lr scheduler does not advance on a skipped step (as HF Trainer).
"""

from __future__ import annotations

import math
import random
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import reset_seed
from torch import nn
from torch.distributed.fsdp._common_utils import clean_tensor_name

from peftlab import distributed, loss_scaling, optim
from peftlab.config_utils import require
from peftlab.methods.base import Method
from peftlab.offload import CpuOffload
from peftlab.precision import PrecisionRule
from peftlab.run_config import OptimConfig
from peftlab.tasks.base import Task

# Evaluation metrics are computed from the outputs of every process (gather_batches), hence identical on every
# process: Lightning's advice to average them across devices (sync_dist=True) does not apply.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|val_best|test)/")


class PeftModule(pl.LightningModule):
    def __init__(self, model: nn.Module, method: Method, task: Task, optim: dict[str, Any],
                 run_config: dict[str, Any] | None = None, select: Sequence[str] | None = None) -> None:
        """``run_config``: the settings a checkpoint must have been trained with to be resumed (see train.py).
        ``select``: the validation metrics whose mean picks the best epoch (``report.select``; None: the main one)."""
        super().__init__()
        self.model = model.train()  # HF models load in eval mode; Lightning keeps the mode it finds
        self.method = method
        self.task = task
        self.optim = optim
        self.run_config = run_config or {}
        self.strict_loading = False  # frozen weights are not in our checkpoints: they come from the base model
        self._outputs: dict[str, list[dict[str, Any]]] = {"validation": [], "test": []}
        self.best: dict[str, float] = {}
        self.select = list(select) if select else [task.main_metric]
        declared = getattr(task.config, "metrics", None)  # tasks that list their metrics: check before training
        unknown = [n for n in self.select if declared is not None and n not in declared]
        require(not unknown, f"report.select={self.select}: {unknown} not among task '{task.name}' metrics "
                f"{list(declared or [])} (name validation metrics of the task, or report.select=null)")
        self.best_epoch: dict[str, float] = {}  # the validation metrics of the best epoch so far (_track_best_epoch)
        self.schedule_origin = 0  # global step at which the current lr schedule (warm-up, decay) began
        self.schedule_position = 0  # updates of that schedule made before the current scheduler was built
        self._rng_to_restore: dict[str, Any] | None = None
        self.precision_rule = PrecisionRule()
        self._step_skipped: bool | None = None  # the last optimizer step's outcome, until the method's step hook ran
        # optim.offload: the optimizer of full-parameter phases in CPU memory (peftlab.offload, docs/memory.md)
        self.offload = CpuOffload(bool(optim.get("offload", False)), self.model)

    # ---- training ----
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.task.loss(self.model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at global step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=_batch_size(batch))
        return loss

    def apply_precision_rule(self) -> None:
        """Trained tensors fp32, the others in their load dtype (:mod:`peftlab.precision`); in an offloaded
        phase every weight keeps its load dtype on the device, its fp32 master in CPU memory (peftlab.offload)."""
        trained = [] if self.offload.applies(self.model) else self.method.trained_parameters(self.model)
        self.precision_rule.apply(self.model, trained)

    def on_fit_start(self) -> None:
        self.method.on_fit_start(self.model, int(self.trainer.estimated_stepping_batches))

    def on_after_backward(self) -> None:
        self.method.on_after_backward(self.model)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.method.on_before_backward(loss_scaling.loss_scale(self.trainer))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per optimizer step (Lightning calls it after the last micro-batch's backward, with the gradients
        unscaled): decide whether the loss scaler skips the step, counting the gradients the method read outside
        the optimizer (:mod:`peftlab.loss_scaling`), and tell the method."""
        self._step_skipped = loss_scaling.step_is_skipped(self.trainer, optimizer, self.method.gradient_overflow())
        self.method.on_before_optimizer_step(self.model, self._step_skipped)

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        """The scheduler advances once per optimizer update: not on a step the loss scaler skipped (as HF Trainer,
        whose ``optimizer_step_was_skipped`` holds the scheduler back), so the schedule follows the updates made."""
        if not self._step_skipped:
            super().lr_scheduler_step(scheduler, metric)

    def configure_callbacks(self) -> list[pl.Callback]:
        if any(isinstance(c, MethodStep) for c in self.trainer.callbacks):
            return []  # attached by an earlier fit/test of this trainer
        return [MethodStep()]  # Lightning orders ModelCheckpoint after it

    def method_step(self) -> None:
        """After each optimizer step (from :class:`MethodStep`, before any checkpoint of that step); nothing after
        the other micro-batches of gradient accumulation (no optimizer step ran: Lightning calls the batch-end hooks
        after every batch)."""
        if self._step_skipped is None:
            return
        self._step_skipped = None
        if self.method.on_train_batch_end(self.model, self.global_step):
            # the set of trainable tensors changed (e.g. SMT after warm-up): new optimizer, and a new schedule
            # unless the method keeps one across rebuilds (LISA's periodic layer draws)
            if self.method.restarts_schedule:
                self.schedule_origin, self.schedule_position = self.global_step, 0
            else:  # continue the schedule from the updates made (the scheduler holds on steps the scaler skipped)
                self.schedule_position += self.trainer.lr_scheduler_configs[0].scheduler.last_epoch
            self.apply_precision_rule()  # before DDP wraps the new set (its buckets keep the dtype they see)
            distributed.follow_trainable_set(self.trainer.strategy)
            self.trainer.strategy.setup_optimizers(self.trainer)

    def ddp_ignored_parameters(self) -> set[str]:
        """Parameters DDP must not reduce: those the method probes for gradients without training them."""
        return {f"model.{n}" for n in self.method.probed_parameters(self.model)}

    def setup(self, stage: str) -> None:
        """Before Lightning restores a checkpoint or a strategy wraps the model (DDP buckets keep the dtype they
        see at wrapping): the precision rule over the method's initial trained set, and the run's seed."""
        if self.trainer.world_size > 1:  # the data order depends on it: a resume must use the same
            self.run_config = {**self.run_config, "world_size": self.trainer.world_size}
        if stage == "fit":
            self.apply_precision_rule()
            # Lightning's DDP re-seeds every process when it starts (the run seed again); one process is re-seeded
            # here too, so training draws the same random stream with one process or many (e.g. SPT's LoRA init
            # at its switch; dropout masks still differ: each process draws them for its own rows)
            reset_seed()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # first batch after a resume: continue the saved random streams
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def configure_optimizers(self) -> dict[str, Any]:
        """HF Trainer's optimizer and schedule (:mod:`peftlab.optim`) over the tensors that require grad, at the
        method's current lr; the trained tensors are made fp32 first (the precision rule)."""
        self.apply_precision_rule()  # so AdamW's state is fp32 (a no-op unless the trained set changed)
        config = OptimConfig(**self.optim)
        optimizer = optim.build_optimizer(self.model, config, self.method.current_lr())
        optimizer = self.offload.wrap(optimizer, self.model, self.global_step)  # optim.offload: CPU masters
        # schedule_origin/position, not global_step: on a resume Lightning builds the optimizer before it restores it
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # loads the train loader, unless max_steps alone bounds the run
        batches = trainer.num_training_batches  # inf when the loader is not loaded yet (the epoch-wise schedule)
        schedule = optim.Schedule(
            total=total, origin=self.schedule_origin, position=self.schedule_position,
            warmup=self.method.lr_warmup_steps(),
            steps_per_epoch=math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else total,
            epochs=max(1, trainer.max_epochs or 1))
        scheduler = optim.build_scheduler(optimizer, config, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation ----
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._outputs["validation"].append(self.task.predict(self.model, batch))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._outputs["test"].append(self.task.predict(self.model, batch))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("validation", "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", "test")

    def _log_metrics(self, split: str, prefix: str) -> None:
        outputs, self._outputs[split] = self._outputs[split], []
        loaders = self.trainer.val_dataloaders if split == "validation" else self.trainer.test_dataloaders
        outputs = distributed.gather_batches(outputs, getattr(getattr(loaders, "batch_sampler", None),
                                                              "num_batches", None))
        if not outputs:
            return
        values = self.task.evaluate(outputs, split)
        for name, value in values.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == self.task.main_metric)
        if split == "validation" and not self.trainer.sanity_checking:
            main = values[self.task.main_metric]
            self.best[self.task.main_metric] = max(main, self.best.get(self.task.main_metric, float("-inf")))
            self.log(f"val/{self.task.main_metric}_best", self.best[self.task.main_metric])
            self._track_best_epoch(values)

    def _track_best_epoch(self, values: dict[str, float]) -> None:
        """Best-epoch dev score, as HF Trainer's ``load_best_model_at_end`` with ``metric_for_best_model`` (the
        released CapaBoost/AdaLoRA GLUE scripts): log, as ``val_best/<metric>``, every validation metric of the epoch
        whose selection score is the highest so far. Score = mean of the ``select`` metrics (HF run_glue's
        ``combined_score`` is the mean of the task's metrics, e.g. accuracy and F1 for MRPC/QQP); a tie keeps the
        earlier epoch (HF replaces its best checkpoint only on a strictly greater score). Departure: HF then
        evaluates the reloaded best checkpoint; we record that epoch's evaluation (the same numbers, no reload)."""
        missing = [n for n in self.select if n not in values]
        require(not missing, f"report.select names {missing}: not validation metrics of task '{self.task.name}' "
                f"({sorted(values)})")
        score = statistics.fmean(values[n] for n in self.select)
        if not self.best_epoch or score > self.best_epoch["selection_score"]:
            self.best_epoch = {**values, "selection_score": score, "epoch": float(self.current_epoch)}
        for name, value in self.best_epoch.items():
            self.log(f"val_best/{name}", value)

    # ---- checkpoints: trainable tensors + buffers + method state only ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        keep |= {f"model.{n}" for n, _ in self.model.named_buffers()}
        keep |= {f"model.{n}" for n in self.method.checkpoint_names(self.model)}
        keep = {clean_tensor_name(k) for k in keep}  # FSDP units prefix their modules' names; its state dict does not
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["peftlab"] = {
            "method_state": self.method.method_state(),
            "resume_state": self.method.resume_state(),
            "best": dict(self.best),
            "best_epoch": dict(self.best_epoch),
            "schedule_origin": self.schedule_origin,
            "schedule_position": self.schedule_position,
            "rng": get_rng_state(),
            "run_config": self.run_config,
            "optimizer_engines": self.offload.history,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Runs before Lightning loads the state dict and builds the optimizer: structure first, then tensors."""
        extra = checkpoint.get("peftlab", {})
        saved = extra.get("run_config") or {}
        if saved and self.run_config:
            differ = sorted(k for k in set(saved) | set(self.run_config) if saved.get(k) != self.run_config.get(k))
            require(not differ, "the checkpoint was trained with other settings: "
                    + "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {self.run_config.get(k)!r}" for k in differ[:5])
                    + " (resume with the same config, or start a new run dir / auto_resume=false)")
        self.model = self.method.load_method_state(self.model, extra.get("method_state", {}))
        self.method.load_resume_state(self.model, extra.get("resume_state", {}))
        self.apply_precision_rule()  # before the state dict loads: a bf16 copy would round the saved fp32 values
        self.best = dict(extra.get("best", {}))
        self.best_epoch = dict(extra.get("best_epoch", {}))
        self.schedule_origin = int(extra.get("schedule_origin", 0))
        self.schedule_position = int(extra.get("schedule_position", 0))
        self._rng_to_restore = extra.get("rng")
        self.offload.history = list(extra.get("optimizer_engines", []))


class MethodStep(pl.Callback):
    """Calls the method's per-step hook; a callback so that it runs before ModelCheckpoint saves the step."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        assert isinstance(pl_module, PeftModule)
        pl_module.method_step()


def planned_optimizer_steps(trainer: pl.Trainer, batches_per_epoch: int) -> int | float:
    """The run's optimizer steps before ``fit`` (Lightning's ``estimated_stepping_batches`` formula, which needs the
    fit loop set up): batches per epoch after ``limit_train_batches``, per process (approximately, under a
    distributed sampler), over ``accumulate_grad_batches``, times ``max_epochs``, capped by ``max_steps``."""
    if trainer.max_epochs == -1:
        return float("inf") if trainer.max_steps == -1 else trainer.max_steps
    limit = trainer.limit_train_batches
    batches = int(batches_per_epoch * limit) if isinstance(limit, float) else min(batches_per_epoch, int(limit))
    batches = math.ceil(batches / trainer.world_size)
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def get_rng_state() -> dict[str, Any]:
    """python, numpy, torch CPU (and CUDA, when present) RNG states, as types ``torch.load(weights_only=True)``
    accepts (Lightning loads checkpoints that way)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1
