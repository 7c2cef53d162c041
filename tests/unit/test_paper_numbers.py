"""Every results/paper_numbers CSV: required columns, each row cited, numeric values, no duplicate cell,
task labels that our records produce (so the join with our runs can happen)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from peftlab.tables import AVERAGE, GROUP_AVERAGE, PAPER_COLUMNS, PARAMS_PCT, load_paper_numbers

ROOT = Path(__file__).resolve().parents[2]
PAPER_DIR = ROOT / "results" / "paper_numbers"
FILES = sorted(PAPER_DIR.glob("*.csv"))


def known_columns() -> set[str]:
    """Column labels our records can produce: task names, commonsense evaluation sets, averages."""
    names = {AVERAGE, GROUP_AVERAGE, PARAMS_PCT}
    for path in (ROOT / "conf" / "task").rglob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        names.add(cfg["name"])
        names.update(cfg.get("eval_sets", []))
    return names


def test_expected_files_exist() -> None:
    names = {p.name for p in FILES}
    assert {"smt_commonsense.csv", "dora_commonsense.csv", "capaboost_glue.csv", "capaboost_squad.csv",
            "capaboost_vtab.csv", "sparse_methods.csv", "smt_budget.csv"} <= names
    assert (PAPER_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_csv_valid_and_cited(path: Path) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == list(PAPER_COLUMNS)
    numbers = load_paper_numbers(path)  # raises on uncited, non-numeric or duplicate rows
    assert len(numbers) == len(rows)
    columns = known_columns()
    for row in rows:
        assert row["task"] in columns, f"{path.name}: task {row['task']!r} is no column our records produce"
        value = float(row["value"])
        assert 0 <= value <= 100, f"{path.name}: {row} is not a percentage-scale number"


def test_no_cell_given_twice_across_files() -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for path in FILES:
        for key in load_paper_numbers(path):
            assert key not in seen, f"{key} in both {seen[key]} and {path.name}"
            seen[key] = path.name


def test_experiment_tables_have_their_csv() -> None:
    for exp in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        table = yaml.safe_load(exp.read_text()).get("table") or {}
        if table.get("paper_numbers"):
            assert (PAPER_DIR / table["paper_numbers"]).is_file(), f"{exp.name}: {table['paper_numbers']} missing"
