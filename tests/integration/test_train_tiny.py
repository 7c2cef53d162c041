"""End to end: full FT (tiny random BERT) and LoRA (the shipped MiniLM) train until the loss falls, test,
and write a complete record. LoRA on a *random* 2-layer BERT needs far more steps to move at all (the
frozen random features barely separate inputs), so its end-to-end check uses the real pretrained MiniLM."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from peftlab.train import run
from tests.integration.cli import run_cli


def _train_losses(out_dir: Path) -> list[float]:
    with open(out_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize(("method", "model", "lr", "epochs"), [("full", "tiny_bert", "3e-3", 25),
                                                              ("lora", "minilm", "5e-3", 20)])
def test_end_to_end(cfg_factory, tmp_path: Path, method: str, model: str, lr: str, epochs: int) -> None:
    cfg = cfg_factory(
        f"method={method}", f"model={model}", f"method.lr={lr}", "logger=csv", "trainer.log_every_n_steps=1",
        "task.num_train=16", "task.num_validation=16", "task.batch_size=16", f"trainer.max_epochs={epochs}",
        "optim.warmup_ratio=0",
    )
    metrics = run(cfg)
    losses = _train_losses(Path(cfg.paths.output_dir))
    assert len(losses) == epochs
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses  # memorises 16 examples

    (record_file,) = (tmp_path / "runs").rglob("*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "complete"
    assert record["method"] == method and record["model"] == model
    assert record["metrics"]["test/accuracy"] == metrics["test/accuracy"]
    assert 0 < record["params"]["trainable"] <= record["params"]["total"]
    assert (record["params"]["trainable"] == record["params"]["total"]) == (method == "full")
    for key in ("git", "hardware", "versions", "config", "wall_time_s", "memory"):
        assert record[key], key


def test_nan_loss_stops_the_run_and_leaves_a_failed_record(cfg_factory, tmp_path: Path, monkeypatch) -> None:
    from peftlab.tasks.glue import GlueTask

    calls = {"n": 0}
    real_loss = GlueTask.loss

    def loss_turning_nan(self, model, batch):  # finite for two steps, then NaN
        calls["n"] += 1
        loss = real_loss(self, model, batch)
        return loss if calls["n"] <= 2 else loss * float("nan")

    monkeypatch.setattr(GlueTask, "loss", loss_turning_nan)
    cfg = cfg_factory("method=lora", "task.num_train=64", "trainer.max_epochs=2")
    with pytest.raises(FloatingPointError, match="non-finite training loss .* at global step 2"):
        run(cfg)
    (record_file,) = (tmp_path / "runs").rglob("*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "failed" and "metrics" not in record


def test_multirun_sweeps_methods_and_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-m", "method=full,lora", "seed=0,1", "model=tiny_bert", "logger=none", "callbacks=none",
            "task.num_train=32", "task.num_validation=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            f"paths.results_dir={tmp_path}/runs", f"hydra.sweep.dir={tmp_path}/multirun"]
    assert run_cli(args, monkeypatch) == 0, capsys.readouterr().err[-2000:]  # train.py's entry, in this process
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    assert sorted((r["method"], r["seed"]) for r in records) == [("full", 0), ("full", 1), ("lora", 0), ("lora", 1)]
    assert all(r["status"] == "complete" for r in records)
