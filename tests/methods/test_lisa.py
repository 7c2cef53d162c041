"""LISA: property matrix, periodic seeded draws, optimizer rebuilt over the new set, exact resume state,
instantaneous and expected counts."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from peftlab import global_state
from peftlab.budget import compose, count
from peftlab.errors import ConfigError
from peftlab.methods.base import count_parameters
from peftlab.methods.lisa import Lisa
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import build, validate
from tests.conftest import TINY, compose_config
from tests.methods.properties import MethodProperties

HIDDEN, FFN, LAYERS, LABELS, VOCAB, POS = 64, 128, 2, 2, 30522, 128  # tiny_bert
# one BERT block: q,k,v,o (4·(h² + h)) + 2 LayerNorms (4h) + up (h·f + f) + down (f·h + h)
BLOCK = 4 * (HIDDEN**2 + HIDDEN) + 4 * HIDDEN + HIDDEN * FFN + FFN + FFN * HIDDEN + HIDDEN
# embeddings (word, position, 2 token types, LayerNorm) + pooler + classifier
OUTSIDE = (VOCAB + POS + 2) * HIDDEN + 2 * HIDDEN + HIDDEN**2 + HIDDEN + HIDDEN * LABELS + LABELS


def lisa_count(activated: int, block: int = BLOCK, outside: int = OUTSIDE) -> int:
    """Trainable at any moment: everything outside the blocks + γ blocks (equal-sized)."""
    return outside + activated * block


class TestLisaProperties(MethodProperties):
    method = "lisa"
    overrides = ["method.activated_layers=1", "method.sample_seed=0", "method.lr=1e-3"]

    @property
    def trainable_regex(self) -> str:  # type: ignore[override]
        (active,) = Lisa.draw(_seeded(0), 0)
        return rf"(?!bert\.encoder\.layer\.).*|bert\.encoder\.layer\.{active}\..*"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return lisa_count(1)


def _seeded(seed: int, layers: int = LAYERS, activated: int = 1) -> Lisa:
    method = Lisa(Lisa.config_cls(name="lisa", activated_layers=activated, sample_seed=seed))
    method.num_layers = layers
    return method


def test_draws_are_uniform_seeded_and_periodic() -> None:
    method = _seeded(5, layers=8, activated=2)
    draws = [method.draw(p) for p in range(200)]
    assert all(len(set(d)) == 2 and all(0 <= i < 8 for i in d) for d in draws)
    assert draws == [_seeded(5, 8, 2).draw(p) for p in range(200)]  # a function of (seed, period)
    assert draws != [_seeded(6, 8, 2).draw(p) for p in range(200)]
    hits = torch.bincount(torch.tensor(draws).flatten(), minlength=8).float() / 200
    assert torch.allclose(hits, torch.full((8,), 2 / 8), atol=0.1)  # each block in ~γ/N_L of the periods


def test_switch_every_k_steps_and_state_round_trip() -> None:
    spec, method, task = validate(compose_config(["model=tiny_llama", "task=commonsense_synthetic", "method=lisa",
                                                  "method.activated_layers=1",
                                                  "method.interval_steps=3", "method.sample_seed=1"]))
    model = method.apply(load_backbone(spec, "causal_lm", None), spec)
    assert method.path == "model.layers" and method.num_layers == LAYERS
    flips = [step for step in range(1, 10) if method.on_train_batch_end(model, step)]
    assert flips == [3, 6, 9] and method.period == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(re.match(rf"model\.layers\.{method.active[0]}\.", n) for n in trainable if ".layers." in n)
    assert "model.embed_tokens.weight" in trainable and "lm_head.weight" in trainable
    state = json.loads(json.dumps(method.method_state()))
    fresh_spec, fresh, _ = validate(compose_config(["model=tiny_llama", "task=commonsense_synthetic", "method=lisa",
                                                   "method.activated_layers=1",
                                                   "method.interval_steps=3", "method.sample_seed=1"]))
    fresh_model = fresh.load_method_state(fresh.apply(load_backbone(fresh_spec, "causal_lm", None), fresh_spec), state)
    assert fresh.active == method.active and fresh.period == 3
    assert {n for n, p in fresh_model.named_parameters() if p.requires_grad} == trainable
    assert fresh.on_train_batch_end(fresh_model, 12) and fresh.active == method.draw(4)  # same sequence goes on


def test_optimizer_is_rebuilt_over_the_active_blocks_in_a_run(cfg_factory) -> None:
    # 64 examples / batch 16 = 4 steps, K = 2: switches after steps 2 and 4
    cfg = cfg_factory("method=lisa", "method.activated_layers=1", "method.interval_steps=2", "test=false")
    module, datamodule, _ = build(cfg)
    import hydra

    with global_state.kept():  # the run's trainer (deterministic=True) changes process-wide switches
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
        trainer.fit(module, datamodule=datamodule)
    assert module.method.period == 2
    (optimizer,) = trainer.optimizers
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in module.model.parameters() if p.requires_grad}
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == lisa_count(1)


def test_one_lr_schedule_across_rebuilds(cfg_factory) -> None:
    """A rebuild at every step (K=1) continues the run's schedule instead of warming up again (LMFlow keeps one)."""
    import hydra
    import pytorch_lightning as pl

    cfg = cfg_factory("method=lisa", "method.activated_layers=1", "method.interval_steps=1", "method.lr=1e-3",
                      "optim.warmup_steps=1", "test=false", "+trainer.limit_val_batches=0")
    module, datamodule, _ = build(cfg)
    lrs: list[float] = []

    class RecordLr(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    with global_state.kept():  # the run's trainer (deterministic=True) changes process-wide switches
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[RecordLr()])
        trainer.fit(module, datamodule=datamodule)
    # 4 steps, 1 warm-up step (HF's linear schedule): factor 0, then linear decay (4-s)/3 — a restarted schedule would
    # give 0 again
    assert lrs == pytest.approx([1e-3 * f for f in (0.0, 1.0, 2 / 3, 1 / 3)])


def test_budget_counts_instantaneous_and_expected() -> None:
    budget = count(compose([*TINY, "method=lisa", "method.activated_layers=1"]))
    assert budget.trainable == budget.extra["instantaneous"] == budget.extra["expected"] == lisa_count(1)
    full = count(compose([*TINY, "method=full"]))
    assert full.trainable == lisa_count(LAYERS)  # γ = N_L is full fine-tuning


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="interval_steps"):
        validate(compose_config(["model=tiny_bert", "method=lisa", "method.interval_steps=0"]))
    spec, method, task = validate(compose_config(["model=tiny_bert", "method=lisa", "method.activated_layers=3"]))
    with pytest.raises(ConfigError, match="exceeds the 2 blocks"):
        method.apply(load_backbone(spec, task.head, task.num_labels), spec)
    spec, method, task = validate(compose_config(["model=tiny_bert", "method=lisa", "method.layers=nope"]))
    with pytest.raises(ConfigError, match="not a module"):
        method.apply(load_backbone(spec, task.head, task.num_labels), spec)


def test_head_frozen_when_asked() -> None:
    spec, method, task = validate(compose_config(["model=tiny_bert", "method=lisa", "method.train_head=false"]))
    model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
    assert count_parameters(model)[0] == lisa_count(2) - HIDDEN * LABELS - LABELS
