"""``scripts/reproduce.py <table> --plan``: every table's cells composed, each phase's peak per GPU predicted
(docs/memory.md), and a launch refused in one line when a cell needs more than ``--gpu-mem``."""

from __future__ import annotations

import pytest

from peftlab import reproduce as rp
from peftlab.memory.cells import refusal
from peftlab.memory.states import GiB

TABLES = rp.experiment_names()


def _first_task_plan(table: str) -> list:
    """The table's cells at its first task entry (every method and budget; the other tasks share the harness)."""
    first = next(iter(rp.plan(table).points)).task
    return rp.memory_plan(rp.plan(table, only_tasks=[first]))


@pytest.mark.parametrize("table", [pytest.param(t, marks=() if t == "smt_commonsense" else pytest.mark.slow)
                                   for t in TABLES])
def test_every_mini_plan_composes_and_fits(table: str) -> None:
    if "mini" not in rp.load_table(table):
        pytest.skip(f"{table} has no mini version")
    cells = rp.memory_plan(rp.plan(table, mini=True))
    assert cells and all(c.error is None and c.prediction is not None for c in cells)
    assert all("CPU process" in c.gpus and c.steps[0].isdigit() for c in cells)


def test_refusal_is_one_line_before_launch() -> None:
    cells = rp.memory_plan(rp.plan("smt_commonsense", mini=True))
    assert refusal(cells, 80, "smt_commonsense") is None
    line = refusal(cells, 0.001, "smt_commonsense")  # 1 MiB holds no cell
    assert line is not None and "\n" not in line and "more than --gpu-mem 0.001 GiB" in line


@pytest.mark.slow
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
@pytest.mark.parametrize("table", TABLES)
def test_every_table_plan_fits_one_80_gib_gpu(table: str) -> None:
    cells = _first_task_plan(table)
    assert cells and all(c.error is None for c in cells), [c.describe() for c in cells if c.error]
    assert all(c.peak <= 80 * GiB for c in cells), [c.describe() for c in cells if c.peak > 80 * GiB]
