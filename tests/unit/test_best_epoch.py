"""Best-epoch dev score (PeftModule._track_best_epoch): every validation metric of the epoch whose selection score
(mean of ``report.select``, HF run_glue's combined_score) was best, logged as ``val_best/<metric>``, as the released
GLUE scripts' ``load_best_model_at_end`` keeps; a tiny run records them; a bad ``report.select`` fails at once."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from torch import nn

from peftlab.errors import ConfigError
from peftlab.module import PeftModule
from peftlab.train import run


def _module(select: list[str] | None) -> tuple[PeftModule, dict[str, float]]:
    task = SimpleNamespace(name="mrpc", main_metric="accuracy", config=SimpleNamespace(metrics=["f1", "accuracy"]))
    module = PeftModule(nn.Linear(2, 2), method=None, task=task, optim={}, select=select)  # type: ignore[arg-type]
    logged: dict[str, float] = {}

    def log(name: str, value: Any, **_: Any) -> None:
        logged[name] = value

    module.log = log  # type: ignore[method-assign]
    return module, logged


EPOCHS = [{"accuracy": 80.0, "f1": 70.0},   # score 75
          {"accuracy": 78.0, "f1": 90.0},   # score 84: the best epoch by the combined score
          {"accuracy": 85.0, "f1": 80.0},   # score 82.5: best accuracy, not the best epoch
          {"accuracy": 74.0, "f1": 94.0}]   # score 84: a tie keeps the earlier epoch (HF: strictly greater)


def test_best_epoch_by_the_combined_score() -> None:
    module, logged = _module(["accuracy", "f1"])
    for values in EPOCHS:
        module._track_best_epoch(values)
    assert logged["val_best/accuracy"] == 78.0 and logged["val_best/f1"] == 90.0
    assert logged["val_best/selection_score"] == 84.0


def test_best_epoch_by_the_main_metric_by_default() -> None:
    module, logged = _module(None)
    for values in EPOCHS:
        module._track_best_epoch(values)
    assert (logged["val_best/accuracy"], logged["val_best/f1"]) == (85.0, 80.0)


def test_select_must_name_metrics_of_the_task() -> None:
    with pytest.raises(ConfigError, match=r"report.select=\['nope'\]: \['nope'\] not among task 'mrpc' metrics"):
        _module(["nope"])


def test_a_run_records_the_best_epoch(cfg_factory, tmp_path: Path) -> None:
    cfg = cfg_factory("method=lora", "task.num_train=32", "task.num_validation=32", "trainer.max_epochs=2",
                      "report.value=val_best", "report.select=[accuracy,f1]")
    metrics = run(cfg)
    assert {"val_best/accuracy", "val_best/f1", "val_best/selection_score", "val_best/epoch"} <= set(metrics)
    (path,) = (tmp_path / "runs").rglob("*.json")
    record = json.loads(path.read_text())
    assert record["config"]["report"] == {"value": "val_best", "select": ["accuracy", "f1"]}
    best = record["metrics"]
    assert best["val_best/selection_score"] == pytest.approx((best["val_best/accuracy"] + best["val_best/f1"]) / 2)
    assert best["val_best/epoch"] in (0.0, 1.0)
