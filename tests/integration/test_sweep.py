"""A multirun, and a reproduction, say which runs failed and why, and exit non-zero when any did; a
reproduction in which every run failed writes no table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab.sweep import OUTCOME, collect, summary
from tests.conftest import ROOT, TINY
from tests.integration.cli import reproduce_script, run_cli


def test_multirun_lists_failed_jobs_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "mr" / "9_old" / OUTCOME  # left by an earlier sweep into the same directory: not counted
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"status": "failed", "overrides": ["old"], "error": "old"}))
    code = run_cli(["-m", *TINY, "task.num_train=32", f"paths.results_dir={tmp_path / 'runs'}",
                    f"hydra.sweep.dir={tmp_path / 'mr'}", "method.r=0,4"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert f"[peftlab] multirun {tmp_path / 'mr'}: 1 of 2 job(s) complete, 1 failed" in err
    (failed,) = [line for line in err.splitlines() if line.startswith("  FAILED ")]
    assert failed.endswith("(method.r=0): ConfigError: method.r must be an integer >= 1, got 0"), failed
    assert [o["status"] for o in collect(tmp_path / "mr")] == ["failed", "complete"]
    (record,) = (tmp_path / "runs").rglob("*.json")  # the complete job trained and left its record
    assert json.loads(record.read_text())["status"] == "complete"


def test_multirun_of_complete_jobs_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["-m", *TINY, "task.num_train=32", "train=false", f"paths.results_dir={tmp_path / 'runs'}",
                    f"hydra.sweep.dir={tmp_path / 'mr'}", "seed=0,1"], monkeypatch)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert f"[peftlab] multirun {tmp_path / 'mr'}: 2 of 2 job(s) complete, 0 failed" in out


def test_summary_names_what_sets_each_failed_job_apart() -> None:
    outcomes = [{"dir": "mr/0", "status": "complete", "overrides": ["task=a", "seed=0"], "error": None},
                {"dir": "mr/1", "status": "failed", "overrides": ["task=b", "seed=0"],
                 "error": "DataUnavailableError: task.data_root=x is not\na directory"}]
    assert summary(outcomes, "sweep") == [
        "sweep: 1 of 2 job(s) complete, 1 failed",
        "  FAILED mr/1 (task=b): DataUnavailableError: task.data_root=x is not a directory"]


def test_reproduce_lists_failed_runs_exits_1_and_writes_no_empty_table(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    table = ROOT / "results" / "tables" / "mini" / "capaboost_vtab.md"
    before = table.read_bytes() if table.exists() else None
    args = ["capaboost_vtab", "--mini", "--methods", "lora", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"),
            "--", "method.r=0", f"hydra.sweep.dir={tmp_path}/multirun"]
    assert reproduce_script().main(args) == 1  # in this process; it launches the train.py -m child
    err = capsys.readouterr().err
    assert "[reproduce] capaboost_vtab: 0 of 1 job(s) complete, 1 failed" in err
    (failed,) = [line for line in err.split("[reproduce] capaboost_vtab:")[1].splitlines()
                 if line.startswith("  FAILED ")]
    assert " method.r=0 " in failed and failed.endswith("ConfigError: method.r must be an integer >= 1, got 0")
    assert "no complete run of table 'capaboost_vtab'" in err and "table not written" in err
    assert (table.read_bytes() if table.exists() else None) == before
