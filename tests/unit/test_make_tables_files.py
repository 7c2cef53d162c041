"""scripts/make_tables.py and the files it writes: a rebuild from the same records leaves the tracked table files
untouched (only the "built:" date would change), and records outside any table (the demo's) get a message that
says so and how to build a table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_tables import load_script, make_record, write


def test_rebuilding_from_the_same_records_does_not_rewrite_the_table(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    make_tables = load_script("make_tables")
    runs, out = tmp_path / "runs", tmp_path / "tables"
    write(runs, make_record("rte", "lora", 0, 80.0))
    args = ["--runs", str(runs), "--out", str(out)]
    assert make_tables.main(args) == 0
    md = out / "t.md"
    built = next(line for line in md.read_text().splitlines() if line.startswith("- built: "))
    md.write_text(md.read_text().replace(built, "- built: 2000-01-01T00:00:00+00:00"))  # an earlier build
    os.utime(md, (0, 0))
    capsys.readouterr()
    assert make_tables.main(args) == 0
    assert "2000-01-01" in md.read_text() and md.stat().st_mtime == 0  # same records: untouched
    assert "(unchanged: not rewritten)" in capsys.readouterr().out
    write(runs, make_record("rte", "lora", 1, 82.0))
    assert make_tables.main(args) == 0
    assert "2000-01-01" not in md.read_text() and "from 2 complete record(s)" in md.read_text()


def test_records_outside_any_table_say_how_to_build_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tables = load_script("make_tables")
    demo = make_record("synthetic_pairs", "lora", 0, 73.0)
    del demo["config"]["table"]  # a plain `python train.py` run
    write(tmp_path / "runs", demo, name="demo.json")
    assert make_tables.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "tables")]) == 1
    err = capsys.readouterr().err
    assert "the 1 complete record(s) under" in err and "belong to no table" in err
    assert "python scripts/reproduce.py <table>" in err and "--runs results/mini/runs --mini" in err
