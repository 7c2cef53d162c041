"""The offloaded optimizer (peftlab.offload) on CPU: its steps are fp32 AdamW's, its master stays fp32 under a bf16
model, its state dict carries the masters; inside a run, SMT's switch from the offloaded warm-up to blocks on the
device gives the selection and trajectory of one engine, and a run resumes in either phase.

On a CPU the "device" is the CPU itself: the masters are separate fp32 tensors, the hooks move and free every
gradient, the step runs on the masters and is copied back: the whole code path but no memory saving (that is the
GPU check, scripts/device_check_offload.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn

from peftlab.config_utils import ConfigError
from peftlab.offload import DEVICE_ENGINE, OFFLOAD_ENGINE, CpuOffload, check
from peftlab.train import build

SMT = ["method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=5", "method.warmup_steps=2",
       "method.lr=1e-3", "method.smt_lr=3e-3", "method.train_head=false"]


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, accumulate: int, steps: int = 4) -> None:
    """``steps`` optimizer steps of ``accumulate`` micro-batches each, gradient norm clipped to 0.05 over what the
    optimizer holds (as Lightning clips ``optimizer.param_groups``)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for _ in range(accumulate):
            x = torch.randn(5, 8, generator=g).to(next(model.parameters()).dtype)
            model(x).float().pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], 0.05)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("accumulate", [1, 3])
def test_offloaded_steps_equal_fp32_adamw_to_the_bit(accumulate: int) -> None:
    reference, offloaded = _model(), _model()
    adamw = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    host = CpuOffload(True, offloaded).wrap(torch.optim.AdamW(offloaded.parameters(), lr=1e-2, weight_decay=0.1,
                                                              betas=(0.9, 0.95)), offloaded, 0)
    assert all(p.grad is None for p in offloaded.parameters())
    _steps(reference, adamw, accumulate)
    _steps(offloaded, host, accumulate)
    # tolerance 0: the same torch AdamW kernel on the same fp32 gradients (the offloaded one's summed on the masters)
    for a, b in zip(reference.parameters(), offloaded.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in offloaded.parameters())  # every gradient was moved off and freed


def test_bf16_weights_keep_an_fp32_master_that_receives_every_update() -> None:
    # the precision rule's promise: an update far below half a bf16 unit still lands, in the fp32 master
    model = _model(torch.bfloat16)
    start = [p.detach().float().clone() for p in model.parameters()]
    opt = CpuOffload(True, model).wrap(torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0), model, 0)
    _steps(model, opt, accumulate=1, steps=3)
    masters = [m for g in opt.param_groups for m in g["params"]]
    assert all(m.dtype == torch.float32 for m in masters)
    moved = [(m - s).abs().max().item() for m, s in zip(masters, start, strict=True)]
    assert all(d > 1e-7 for d in moved), moved  # ~3 × lr: lost entirely if the master were bf16
    for p, m in zip(model.parameters(), masters, strict=True):
        assert p.dtype == torch.bfloat16 and torch.equal(p, m.to(torch.bfloat16))  # the weights: masters rounded
    state = next(iter(opt.state.values()))
    assert state["exp_avg"].dtype == torch.float32


def test_state_dict_carries_the_masters() -> None:
    model = _model(torch.bfloat16)
    opt = CpuOffload(True, model).wrap(torch.optim.AdamW(model.parameters(), lr=1e-6), model, 0)
    _steps(model, opt, accumulate=1, steps=2)
    saved = opt.state_dict()
    fresh = _model(torch.bfloat16)
    fresh.load_state_dict(model.state_dict())  # what a checkpoint restores: the rounded bf16 weights
    opt2 = CpuOffload(True, fresh).wrap(torch.optim.AdamW(fresh.parameters(), lr=1e-6), fresh, 2)
    opt2.load_state_dict(saved)
    for a, b in zip((m for g in opt.param_groups for m in g["params"]),
                    (m for g in opt2.param_groups for m in g["params"]), strict=True):
        assert torch.equal(a, b)  # the exact fp32 masters, not the rounded weights
    with pytest.raises(ConfigError, match="holds no fp32 masters"):
        opt2.load_state_dict(torch.optim.AdamW(_model().parameters()).state_dict())


def test_refused_settings(cfg_factory: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError, match="not sharded over processes"):
        check(cfg_factory("optim.offload=true", "trainer.strategy=ddp", "trainer.devices=2"))
    with pytest.raises(ConfigError, match="fp16 loss scaling"):
        check(cfg_factory("optim.offload=true", "trainer.precision=16-mixed"))
    lora = _model()
    lora[0].weight.requires_grad_(False)
    with pytest.raises(ConfigError, match="trains part of the model from the start"):
        CpuOffload(True, lora)


def _fit(cfg: DictConfig, steps: int, tmp_path: Path, ckpt: Path | None = None
         ) -> tuple[pl.LightningModule, pl.Trainer]:
    """``steps`` optimizer steps of ``cfg``; a checkpoint after every step (``tmp_path/step=<n>.ckpt``), as a run
    writes them (mid-epoch, inside fit); resumed from ``ckpt`` when given."""
    module, data, _ = build(cfg)
    every_step = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1,
                                              save_top_k=-1, enable_version_counter=False)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=[every_step],
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=str(tmp_path), gradient_clip_val=1.0)
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    return module, trainer


def _trained(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}


def test_smt_switch_across_engines_and_resume_in_each_phase(cfg_factory: Callable[..., DictConfig],
                                                             tmp_path: Path) -> None:
    one, _ = _fit(cfg_factory(*SMT), 5, tmp_path / "one")  # AdamW on the device in both phases
    cfg = cfg_factory(*SMT, "optim.offload=true")
    two, trainer = _fit(cfg, 5, tmp_path / "two")  # warm-up offloaded, blocks on the device
    assert two.method.selection == one.method.selection and two.method.switched_at == 2
    a, b = _trained(one), _trained(two)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)  # same block trajectory, to the bit
    assert type(trainer.optimizers[0]) is torch.optim.AdamW
    assert two.offload.history == [{"from_step": 0, "engine": OFFLOAD_ENGINE},
                                   {"from_step": 2, "engine": DEVICE_ENGINE}]
    assert not two.offload._handles  # the warm-up's hooks went with its optimizer
    # resumed inside the offloaded warm-up (after step 1) and inside block training (after step 3): one run's end
    for stop in (1, 3):
        resumed, _ = _fit(cfg_factory(*SMT, "optim.offload=true"), 5, tmp_path / f"from{stop}",
                          ckpt=tmp_path / "two" / f"step={stop}.ckpt")
        c = _trained(resumed)
        assert resumed.method.selection == one.method.selection
        assert all(torch.equal(a[n], c[n]) for n in a), f"resumed after step {stop}"
        assert resumed.offload.history == two.offload.history
