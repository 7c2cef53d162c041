"""Determinism on CPU: the same seed gives identical runs (metrics and final tensors), another seed a different
run, and the seed reaches every random choice: data order, head init, CapaBoost masks and dropout."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from peftlab.data import EpochShuffleSampler
from peftlab.train import build, run

RUN = ["method=lora", "method.lr=5e-3", "callbacks=default", "callbacks.checkpoint.every_n_train_steps=4",
       "task.num_train=32", "trainer.max_epochs=2"]


def test_sampler_order_depends_on_seed_and_epoch_only() -> None:
    a, b, other_seed = EpochShuffleSampler(50, 0), EpochShuffleSampler(50, 0), EpochShuffleSampler(50, 1)
    assert list(a) == list(b) == a.order(0) and sorted(a) == list(range(50))
    assert list(other_seed) != list(a)
    a.set_epoch(1)
    assert list(a) != b.order(0) and list(a) == b.order(1)


def test_sampler_resume_skips_the_trained_part_of_its_epoch_once() -> None:
    s = EpochShuffleSampler(20, 3)
    s.resume_at(epoch=2, skip=8)
    assert list(s) == s.order(2)[8:]
    assert list(s) == s.order(2)  # next pass: the whole epoch again
    s.resume_at(epoch=1, skip=8)
    s.set_epoch(2)  # Lightning moved on to the next epoch (checkpoint taken at an epoch end)
    assert list(s) == s.order(2)


def _final(cfg_factory, tmp: Path, seed: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    cfg = cfg_factory(*RUN, f"seed={seed}")
    cfg.paths.output_dir = str(tmp)
    metrics = run(cfg)
    ckpt = torch.load(tmp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return metrics, ckpt["state_dict"]


def test_same_seed_same_run_other_seed_other_run(cfg_factory, tmp_path: Path) -> None:
    m0, t0 = _final(cfg_factory, tmp_path / "a", 0)
    m0_again, t0_again = _final(cfg_factory, tmp_path / "b", 0)
    m1, t1 = _final(cfg_factory, tmp_path / "c", 1)
    assert m0 == m0_again
    assert t0.keys() == t0_again.keys() == t1.keys()
    assert all(torch.equal(t0[k], t0_again[k]) for k in t0)
    trained = [k for k in t0 if "lora_" in k or "classifier" in k]
    assert trained and not any(torch.equal(t0[k], t1[k]) for k in trained)  # every trained tensor differs


def _head(module: pl.LightningModule) -> torch.Tensor:
    return next(p for n, p in module.model.named_parameters() if "classifier" in n and n.endswith("weight"))


def test_seed_reaches_data_order_head_and_masks(cfg_factory) -> None:
    parts: dict[int, list[tuple[list[int], torch.Tensor, torch.Tensor]]] = {}
    for seed in (0, 0, 1):
        module, data, _ = build(cfg_factory("method=capaboost_lora", "method.r=4", f"seed={seed}"))
        order = list(data.train_dataloader().sampler)
        masks = torch.cat([b.flatten().float() for n, b in module.model.named_buffers() if n.endswith(".mask")])
        parts.setdefault(seed, []).append((order, _head(module).detach().clone(), masks))
    (a, b), (c,) = parts[0], parts[1]
    for i, what in enumerate(("data order", "head init", "CapaBoost masks (mask_seed follows seed)")):
        same = a[i] == b[i] if i == 0 else torch.equal(a[i], b[i])
        other = a[i] == c[i] if i == 0 else torch.equal(a[i], c[i])
        assert same, f"{what}: the same seed gave different values"
        assert not other, f"{what}: seeds 0 and 1 gave the same values"


def test_seed_reaches_dropout(cfg_factory) -> None:
    module, data, _ = build(cfg_factory("method=lora"))
    batch = {k: v for k, v in next(iter(data.val_dataloader())).items() if k != "labels"}

    def logits(seed: int, train: bool) -> torch.Tensor:
        pl.seed_everything(seed)  # as train.py; dropout draws from the global torch RNG from here on
        module.model.train(train)
        with torch.no_grad():
            return module.model(**batch).logits

    assert torch.equal(logits(0, train=True), logits(0, train=True))
    assert not torch.equal(logits(0, train=True), logits(1, train=True))
    assert torch.equal(logits(0, train=False), logits(1, train=False))  # the difference is dropout's
