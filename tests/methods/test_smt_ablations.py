"""SMT ablations as config options: random selection (same count, seeded), MLP-only / attention-only / both,
block size and warm-up length as plain overrides; the budget calculator counts random like global."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from peftlab.budget import compose, count
from peftlab.errors import ConfigError
from peftlab.methods.smt.method import SparseMatrixTuning
from peftlab.methods.smt.selection import select_blocks
from peftlab.train import run, validate
from tests.conftest import TINY, compose_config
from tests.methods.properties import MethodProperties
from tests.methods.test_smt import SMT, build, warm

K = 6  # blocks, as in tests/methods/test_smt.py


def selection_of(*overrides: str) -> dict[str, list[int]]:
    model, method, _, batch = build("tiny_bert", *overrides)
    warm(method, model, batch)
    return method.selection


def test_random_keeps_the_count_and_pool_and_is_seeded() -> None:
    scores = {"a": torch.zeros(4, 4), "b": torch.zeros(4, 4)}
    draws = {seed: select_blocks(scores, K, "random", seed) for seed in range(4)}
    for chosen in draws.values():
        assert sum(map(len, chosen.values())) == K
        assert all(0 <= i < 16 for blocks in chosen.values() for i in blocks)
    assert select_blocks(scores, K, "random", 1) == draws[1]  # deterministic per seed
    assert len({str(d) for d in draws.values()}) > 1  # different seeds, different blocks
    with pytest.raises(ConfigError, match="does not fit"):
        select_blocks(scores, 33, "random", 0)


def test_random_selection_after_the_unchanged_warmup() -> None:
    greedy = selection_of("method.selection=global")
    rand0 = selection_of("method.selection=random", "method.selection_seed=0")
    assert sum(map(len, rand0.values())) == sum(map(len, greedy.values())) == K
    assert rand0 == selection_of("method.selection=random", "method.selection_seed=0")
    assert rand0 != selection_of("method.selection=random", "method.selection_seed=1")
    assert rand0 != greedy  # 6 of 96 eligible blocks: a chance tie would be a 1 in ~10⁹ event


def test_selection_seed_follows_the_run_seed() -> None:
    _, method, _ = validate(compose_config(["model=tiny_bert", "method=smt", "seed=7"]))
    assert method.config.selection_seed == 7
    with pytest.raises(ConfigError, match="selection must be one of"):
        validate(compose_config(["model=tiny_bert", "method=smt", "method.selection=randomly"]))


@pytest.mark.parametrize(("targets", "mlp_budget", "types"), [
    ("[q,k,v]", "null", {"q", "k", "v"}),  # attention only (the paper's recommendation)
    ("[]", "4", {"up", "down"}),  # MLP only
    ("[q,k,v]", "4", {"q", "k", "v", "up", "down"}),  # both, separate budgets
])
def test_attention_mlp_or_both(targets: str, mlp_budget: str, types: set[str]) -> None:
    model, method, _, batch = build("tiny_bert", f"method.targets={targets}", f"method.mlp_budget={mlp_budget}",
                                    "method.mlp_targets=[up,down]")
    warm(method, model, batch)
    per_type = method.counts()["per_type"]
    assert set(per_type) <= types and set(per_type) & types
    attention = sum(v for t, v in per_type.items() if t in {"q", "k", "v"})
    mlp = sum(v for t, v in per_type.items() if t in {"up", "down"})
    assert attention == (K if targets != "[]" else 0) and mlp == (4 if mlp_budget != "null" else 0)


def test_empty_targets_need_an_mlp_budget() -> None:
    with pytest.raises(ConfigError, match="MLP-only"):
        validate(compose_config(["model=tiny_bert", "method=smt", "method.targets=[]"]))


@pytest.mark.parametrize("block_size", [8, 16, 32])  # tiny_bert hidden 64: the 64..512 sweep scaled down
def test_block_size_is_an_override(block_size: int) -> None:
    model, method, _, batch = build("tiny_bert", f"method.block_size={block_size}", "method.budget=2")
    warm(method, model, batch)
    assert method.method_state()["trainable_block_params"] == 2 * block_size**2


def test_warmup_length_is_an_override() -> None:
    model, method, _, batch = build("tiny_bert", "method.warmup_steps=5")
    method.warmup(model, itertools.repeat(batch))
    assert method.switched_at == 5


@pytest.mark.parametrize("selection", ["random", "per_matrix"])
def test_budget_calculator_counts_like_global(selection: str) -> None:
    base = [*TINY, "method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=6"]
    assert count(compose([*base, f"method.selection={selection}"])).trainable == count(compose(base)).trainable


def test_random_selection_trains_end_to_end(cfg_factory, tmp_path) -> None:
    cfg = cfg_factory("method=smt", *SMT, "method.selection=random", "task.num_train=48", "task.num_validation=16",
                      "test=false")
    run(cfg)
    (record_file,) = (tmp_path / "runs").rglob("*.json")
    record = json.loads(record_file.read_text())
    state = record["method_state"]
    assert record["status"] == "complete"
    assert state["phase"] == "blocks" and sum(map(len, state["selection"].values())) == K


class TestSmtRandomProperties(MethodProperties):
    method = "smt"
    overrides = [*SMT, "method.selection=random", "method.train_head=false", "method.smt_lr=5e-2",
                 "+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]
    trainable_regex = r".*\.smt_delta"

    def expected_trainable(self, model: torch.nn.Module, spec: object) -> int:
        return K * 16 * 16

    def prepare(self, method: SparseMatrixTuning, model: torch.nn.Module, batch: dict) -> torch.nn.Module:
        return warm(method, model, batch)
