"""SMT inside Lightning's fit: the warm-up → blocks switch, the optimizer rebuilt with smt_lr, and a
checkpoint taken after the switch restoring the block structure and outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from peftlab.methods.base import count_parameters
from peftlab.methods.smt.layer import BlockSparseLinear
from peftlab.train import build

SMT = ["method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=5",
       "method.warmup_steps=2", "method.smt_lr=3e-3", "method.train_head=false"]


def trainer(max_steps: int, tmp_path: Path) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=str(tmp_path))


def test_switch_inside_fit_and_resume(cfg_factory: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = cfg_factory(*SMT, "method.warmup_mode=grad_only")
    module, data, _ = build(cfg)
    base = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    t = trainer(4, tmp_path)
    t.fit(module, datamodule=data)
    method = module.method
    assert method.phase == "blocks" and method.switched_at == 2
    assert count_parameters(module.model)[0] == 5 * 16 * 16
    opt = t.optimizers[0]
    assert [p for g in opt.param_groups for p in g["params"]] == [
        p for p in module.model.parameters() if p.requires_grad]  # optimizer rebuilt over the blocks alone
    assert opt.param_groups[0]["initial_lr"] == 3e-3
    for n, p in module.model.named_parameters():  # grad_only: nothing but the blocks ever moved
        if not n.endswith("smt_delta"):
            assert torch.equal(p, base[n]), n
    assert any(m.smt_delta.abs().sum() > 0 for m in module.model.modules() if isinstance(m, BlockSparseLinear))

    ckpt = tmp_path / "after_switch.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert all(k.endswith(("smt_delta", "smt_rows", "smt_cols")) or "buffers" in k or k.endswith("_ids")
               for k in saved["state_dict"]), "checkpoint holds more than the blocks (and buffers)"
    assert saved["peftlab"]["method_state"]["selection"] == method.selection

    fresh, data2, _ = build(cfg)
    t2 = trainer(6, tmp_path)
    t2.fit(fresh, datamodule=data2, ckpt_path=str(ckpt))
    assert fresh.method.phase == "blocks" and fresh.method.selection == method.selection
    assert t2.global_step == 6
    assert t2.optimizers[0].param_groups[0]["initial_lr"] == 3e-3


def test_full_warmup_checkpoint_keeps_warmup_updates(cfg_factory: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = cfg_factory(*SMT, "method.warmup_mode=full", "method.lr=1e-3")
    module, data, _ = build(cfg)
    t = trainer(3, tmp_path)
    t.fit(module, datamodule=data)
    ckpt = tmp_path / "full.ckpt"
    t.save_checkpoint(ckpt)
    fresh, data2, _ = build(cfg)
    trainer(3, tmp_path).fit(fresh, datamodule=data2, ckpt_path=str(ckpt))  # at max_steps: restore only
    batch = next(iter(data.train_dataloader()))
    module.model.eval(), fresh.model.eval()
    with torch.no_grad():
        expected = module.task.loss(module.model, batch)
        torch.testing.assert_close(fresh.task.loss(fresh.model, batch), expected, rtol=0, atol=1e-6)
