"""One LightningModule for every method × task.

It asks the task for loss, predictions and metrics, and the method for its training-time hooks;
it never branches on either. Optimizer and schedule: AdamW over the trainable parameters only,
linear warm-up then linear decay (the schedule of LoRA/AdaLoRA/LLM-Adapters). Checkpoints hold only
the trainable parameters, buffers and the method's structural state, so a PEFT checkpoint is small
and reloads onto the base model.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from peftlab.methods.base import Method
from peftlab.tasks.base import Task


class PeftModule(pl.LightningModule):
    def __init__(self, model: nn.Module, method: Method, task: Task, optim: dict[str, Any]) -> None:
        super().__init__()
        self.model = model.train()  # HF models load in eval mode; Lightning keeps the mode it finds
        self.method = method
        self.task = task
        self.optim = optim
        self.strict_loading = False  # frozen weights are not in our checkpoints: they come from the base model
        self._outputs: dict[str, list[dict[str, Any]]] = {"validation": [], "test": []}
        self.best: dict[str, float] = {}

    # ---- training ----
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.task.loss(self.model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at global step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=_batch_size(batch))
        return loss

    def on_fit_start(self) -> None:
        self.method.on_fit_start(self.model, int(self.trainer.estimated_stepping_batches))

    def on_after_backward(self) -> None:
        self.method.on_after_backward(self.model)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.method.on_train_batch_end(self.model, self.global_step):
            # the set of trainable tensors changed (e.g. SMT after warm-up): new optimizer + schedule
            self.trainer.strategy.setup_optimizers(self.trainer)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = self.optim
        optimizer = torch.optim.AdamW(
            params,
            lr=self.method.current_lr(),
            weight_decay=o["weight_decay"],
            betas=tuple(o["betas"]),
            eps=o["eps"],
        )
        total = max(1, self.trainer.estimated_stepping_batches - self.global_step)
        warmup = int(o["warmup_ratio"] * total) if o.get("warmup_steps") is None else int(o["warmup_steps"])

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
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
        if not outputs:
            return
        values = self.task.evaluate(outputs, split)
        for name, value in values.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == self.task.main_metric)
        if split == "validation" and not self.trainer.sanity_checking:
            main = values[self.task.main_metric]
            self.best[self.task.main_metric] = max(main, self.best.get(self.task.main_metric, float("-inf")))
            self.log(f"val/{self.task.main_metric}_best", self.best[self.task.main_metric])

    # ---- checkpoints: trainable tensors + buffers + method state only ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        keep |= {f"model.{n}" for n, _ in self.model.named_buffers()}
        keep |= {f"model.{n}" for n in self.method.checkpoint_names(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["peftlab"] = {"method_state": self.method.method_state(), "best": dict(self.best)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("peftlab", {})
        self.model = self.method.load_method_state(self.model, extra.get("method_state", {}))
        self.best = dict(extra.get("best", {}))


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1
