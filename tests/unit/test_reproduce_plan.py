"""``scripts/reproduce.py <table> --plan``: every table's cells composed, each phase's peak per GPU predicted
(docs/memory.md), and a launch refused in one line when a cell needs more than ``--gpu-mem``."""

from __future__ import annotations

import pytest

from peftlab import reproduce as rp
from peftlab.errors import ConfigError
from peftlab.memory.cells import refusal
from peftlab.memory.states import GiB

TABLES = rp.experiment_names()


def _mini_plan(table: str) -> list | None:
    """Every cell of the table's mini version, or None when it has none."""
    try:
        plan = rp.plan(table, mini=True)
    except ConfigError as err:
        assert "no table.mini block" in str(err)
        return None
    return rp.memory_plan(plan)


def test_every_mini_plan_composes_and_fits() -> None:
    # every cell of every table's mini version (the offline demos): composed, predicted, on the CPU trainer
    plans = {table: _mini_plan(table) for table in TABLES}
    assert sum(cells is not None for cells in plans.values()) >= 5
    for table, cells in plans.items():
        if cells is None:
            continue
        assert cells and all(c.error is None and c.prediction is not None for c in cells), table
        assert all("CPU process" in c.gpus and c.steps[0].isdigit() and c.peak <= 24 * GiB for c in cells), table


def test_refusal_is_one_line_before_launch() -> None:
    cells = rp.memory_plan(rp.plan("smt_commonsense", mini=True))
    assert refusal(cells, 80, "smt_commonsense") is None
    line = refusal(cells, 0.001, "smt_commonsense")  # 1 MiB holds no cell
    assert line is not None and "\n" not in line and "more than --gpu-mem 0.001 GiB" in line
    # the overrides a launch adds after `--` are planned too, and what a multi-process layout leaves out is said
    ddp = rp.memory_plan(rp.plan("smt_commonsense", mini=True, only_methods=["lora"]),
                         extra=["trainer.strategy=ddp", "trainer.devices=2"])
    assert "2 CPU processes (trainer.strategy=ddp)" in ddp[0].describe() and "gradient buckets" in ddp[0].describe()


def test_smt_commonsense_plan_fits_80_gib_with_the_offloaded_warmup() -> None:
    cells = rp.memory_plan(rp.plan("smt_commonsense"))
    assert [c.cell for c in cells] == ["lora/commonsense", "dora/commonsense", "smt/commonsense"]
    smt = cells[-1]
    assert smt.prediction.phases["warmup"].engine.startswith("AdamW in CPU memory")
    assert smt.prediction.phases["train"].engine == "AdamW on the device"
    assert all(c.peak <= 80 * GiB for c in cells) and "1 GPU" in smt.gpus and smt.steps.startswith("~")
    line = refusal(cells, 16, "smt_commonsense")  # a 16 GiB GPU holds none of these cells
    assert line is not None and "more than --gpu-mem 16 GiB" in line


@pytest.mark.slow
def test_every_table_plan_fits_one_80_gib_gpu() -> None:
    # every cell (method × task × budget) of every table at its cited settings: 142 cells, LLaMA-7B/8B, DeBERTaV3,
    # ViT-B; each composes its Hydra config and builds its model on fake tensors (~95 s of CPU)
    for table in TABLES:
        cells = rp.memory_plan(rp.plan(table))
        assert cells and all(c.error is None for c in cells), [c.describe() for c in cells if c.error]
        assert all(c.peak <= 80 * GiB for c in cells), [c.describe() for c in cells if c.peak > 80 * GiB]
