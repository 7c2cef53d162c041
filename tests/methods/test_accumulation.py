"""Gradient accumulation: a method's per-step hooks run once per optimizer step, not after every micro-batch.

A run with batch B and ``trainer.accumulate_grad_batches=2`` sees the same global batches as a run with batch 2B
(peftlab.data) and, the losses being means over examples, the same gradients; so it ends with the same tensors and
decisions (float tolerance: two means of B against one mean of 2B). AdaLoRA is the method whose per-step hook
breaks otherwise: ``update_and_allocate`` after each micro-batch would score half-accumulated gradients, mask
twice per step, and raise ``KeyError`` at the final masking (``tfinal > 0``: peft clears its scores there, then the
next micro-batch reads them).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from peftlab.train import build
from tests.conftest import TINY, compose_config

COMMON = [*TINY, "task.num_train=64", "trainer.max_epochs=2", "optim.warmup_steps=1",  # 8 steps of 16 examples
          "+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]
ADALORA = ["method=adalora", "method.lr=1e-2", "method.init_r=4", "method.target_r=2", "method.tinit=1",
           "method.tfinal=2", "method.delta_t=1"]


def train(overrides: list[str], batch_size: int, accumulate: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    module, data, _ = build(compose_config([*COMMON, *overrides, f"task.batch_size={batch_size}"]))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 8
    return module.method.adapter_state_dict(module.model), module.method.method_state()


def test_adalora_accumulating_two_batches_equals_one_batch_of_twice_the_size() -> None:
    tensors, state = train(ADALORA, batch_size=8, accumulate=2)
    tensors_2b, state_2b = train(ADALORA, batch_size=16, accumulate=1)
    assert state == state_2b and state["rank_pattern"]  # the final rank pattern
    assert tensors.keys() == tensors_2b.keys()
    for name, value in tensors.items():
        torch.testing.assert_close(value, tensors_2b[name], rtol=1e-4, atol=1e-5, msg=name)
