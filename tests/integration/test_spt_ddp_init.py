"""SPT's LoRA starts from the same values on every process, whatever the processes' random generators hold.

The DDP wrapper built at SPT's switch does not broadcast (``init_sync=False``): every process must already hold
the same new tensors. A 2-process run in which process 1 re-seeds its global generator before training (as a
resume from a checkpoint taken before the switch can leave it: each process restores rank 0's CUDA RNG list) must
still train one model: LoRA A is drawn from (``init_seed``, tensor name), and the switch compares the values of the
trained tensors across processes.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from tests.integration.test_ddp import COMMON, _ddp_run


class PerturbGenerator(pl.Callback):
    """Re-seeds the global torch generator of global rank ``rank`` when training starts."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == self.rank:
            torch.manual_seed(12345)


def test_spt_lora_is_the_same_on_every_process_after_a_perturbed_generator(tmp_path: Path) -> None:
    overrides = [*COMMON, "method=spt_lora", "method.sensitivity_batches=2", "method.budget=5000",
                 "task.batch_size=8", f"+callbacks.perturb._target_={__name__}.PerturbGenerator",
                 "+callbacks.perturb.rank=1"]
    _, (rank0, rank1) = _ddp_run(tmp_path, overrides)
    assert any(v["mode"] == "lora" for v in rank0["method_state"]["plan"].values())  # LoRA A matrices were drawn
    for name, tensor in rank0["tensors"].items():
        assert torch.equal(tensor, rank1["tensors"][name]), f"{name} differs between the two processes"
