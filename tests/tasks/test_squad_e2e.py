"""SQuAD end to end through ``train.run`` on the generated SQuAD-schema sets: a fast smoke run on a
random-init tiny BERT, and (slow) LoRA / full FT on the shipped MiniLM that must beat trivial baselines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from peftlab.tasks.squad.metrics import squad_v1
from peftlab.tasks.squad.synthetic import make_squad
from peftlab.train import run
from tests.conftest import compose_config

FAST = ["logger=none", "callbacks=none", "trainer.enable_progress_bar=false"]
V2_KEYS = {"exact_match", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_f1", "best_f1_thresh"}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_tiny_squad_v2_run_writes_a_complete_record(tmp_path: Path, method: str) -> None:
    cfg = compose_config([*FAST, "model=tiny_bert", "task=squad_v2_synthetic", f"method={method}",
                          "task.num_train=32", "task.num_validation=16", "trainer.max_epochs=1"], tmp_path)
    metrics = run(cfg)
    assert {f"test/{k}" for k in V2_KEYS} <= set(metrics)
    assert 0.0 <= metrics["test/f1"] <= 100.0
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    assert record["status"] == "complete" and record["task"] == "squad_v2_synthetic"
    if method == "lora":  # LoRA on q, v + the QA head (qa_outputs) only
        assert record["params"]["trainable"] < record["params"]["total"] / 10


def random_span_f1(n: int, seed: int) -> float:
    """F1 of answering each generated dev question with one random word of its context (a chance level)."""
    rows = make_squad(n, seed, multi_gold=True, split="dev")
    rng = random.Random(0)
    preds = {qid: rng.choice(ctx.split()) for qid, ctx in zip(rows["id"], rows["context"], strict=True)}
    return squad_v1(preds, {qid: a["text"] for qid, a in zip(rows["id"], rows["answers"], strict=True)})["f1"]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "lr"), [("lora", 2e-3), ("full", 1e-4)])
def test_minilm_learns_synthetic_squad(tmp_path: Path, method: str, lr: float) -> None:
    # ~1 min of CPU per run. Test F1 over seeds 0-3 (a stand-in for other CPUs' rounding): LoRA 16.1-20.0, full
    # 17.0-28.3; LoRA untrained (lr 1e-12) 4.5, the random-word baseline 1.7. The threshold, 9.7, sits 6.4
    # below the worst of those 8 runs and at twice the untrained model (it was 11.7: 4.4 below the worst).
    small = ["task.num_train=120", "task.num_validation=60", "task.batch_size=8", "task.epochs=2"]
    cfg = compose_config([*FAST, "model=minilm", "task=squad_synthetic", f"method={method}", f"method.lr={lr}",
                          *small], tmp_path)
    metrics = run(cfg)
    chance = random_span_f1(cfg.task.num_validation, cfg.task.data_seed + 1)
    assert metrics["test/f1"] > chance + 8.0, (metrics["test/f1"], chance)
