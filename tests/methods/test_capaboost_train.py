"""CapaBoost end to end on the tiny random BERT: trains, tests, and the run record carries both counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab.train import run


@pytest.mark.parametrize("method", ["capaboost_lora", pytest.param("capaboost_adapter", marks=pytest.mark.slow)])
def test_tiny_end_to_end_record_has_both_counts(cfg_factory, tmp_path: Path, method: str) -> None:
    cfg = cfg_factory(f"method={method}", "seed=3", "task.num_train=32", "trainer.max_epochs=2")
    run(cfg)
    (record_file,) = (tmp_path / "runs").rglob("*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "complete"
    counts = record["params"]["method"]
    assert counts["stored"] == record["params"]["trainable"]
    assert 0 < counts["receives_gradient"] < counts["stored"]
    assert counts["mask_seed"] == 3 == record["config"]["method"]["mask_seed"]
