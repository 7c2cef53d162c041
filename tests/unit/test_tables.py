"""Tables from fixture run records: aggregation, paper join, missing cells, refused and ignored records, scripts."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from peftlab.errors import ConfigError
from peftlab.table_render import Header, render_csv, render_markdown
from peftlab.tables import AVERAGE, GROUP_AVERAGE, VTAB_GROUPS, aggregate, cell_key, load_paper_numbers, load_records

ROOT = Path(__file__).resolve().parents[2]
PAPER_HEADER = "table,row,task,metric,value,paper,arxiv,source_table,version,note\n"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def make_record(task: str, row: str, seed: int, value: float | dict[str, float], table: str = "t",
                status: str = "complete", method: str | None = None, trainable: int = 1000,
                total: int = 100_000, finished: str = "2025-01-01T00:00:00+00:00") -> dict[str, Any]:
    """A run record as src/peftlab/train.py writes it (the fields tables read)."""
    task_cfg: dict[str, Any] = {"name": task}
    metrics: dict[str, float]
    if isinstance(value, dict):  # multi-set task (commonsense): one metric per evaluation set
        task_cfg["eval_sets"] = list(value)
        metrics = {f"test/accuracy/{k}": v for k, v in value.items()}
        metrics["test/avg_accuracy"] = statistics.fmean(value.values())
        main = "avg_accuracy"
    else:
        metrics, main = {"test/accuracy": value}, "accuracy"
    rec: dict[str, Any] = {
        "record_version": 1, "status": status, "task": task, "method": method or row.split()[0], "model": "tiny_bert",
        "seed": seed, "config": {"table": {"name": table, "row": row, "paper_numbers": None}, "task": task_cfg},
        "git": {"commit": "abc123", "dirty": False},
    }
    if status == "complete":
        rec.update(metrics=metrics, main_metric=main, finished=finished,
                   params={"trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total})
    return rec


def write(runs: Path, rec: dict[str, Any] | str, name: str | None = None) -> Path:
    name = name or f"{rec['task']}_{rec['config']['table']['row']}_{rec['seed']}_{rec['status']}.json".replace(" ", "_")
    path = runs / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rec if isinstance(rec, str) else json.dumps(rec))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    for seed, (a, b) in enumerate([(80.0, 60.0), (82.0, 62.0), (84.0, 67.0)]):
        write(d / "x", make_record("rte", "lora", seed, a))
        write(d / "x", make_record("mrpc", "lora", seed, b))
    write(d, make_record("rte", "smt", 0, 90.0, trainable=500))
    return d


def test_aggregation_mean_std_count_exact(runs: Path) -> None:
    data = aggregate(load_records(runs).complete, "t")
    cell = data.cells[("lora", "rte")]
    assert (cell.n, cell.mean, cell.std) == (3, 82.0, 2.0)  # stdev of 80, 82, 84 (ddof=1) is exactly 2
    mrpc = data.cells[("lora", "mrpc")]
    assert mrpc.mean == pytest.approx(63.0) and mrpc.std == pytest.approx(statistics.stdev([60, 62, 67]))
    assert data.cells[("smt", "rte")].std is None  # one seed: no std
    avg = data.averages[("lora", AVERAGE)]  # per-seed mean of rte and mrpc: 70, 72, 75.5
    assert avg.n == 3 and avg.mean == pytest.approx((70 + 72 + 75.5) / 3)
    assert ("smt", AVERAGE) not in data.averages  # smt lacks mrpc: its average is missing, not a partial mean
    assert data.trainable["smt"] == [(500, 0.5)]


def test_missing_run_visible_and_paper_join(runs: Path, tmp_path: Path) -> None:
    csv = tmp_path / "paper.csv"
    csv.write_text(PAPER_HEADER + "t,lora,rte,accuracy,85.5,P,1234.5678,Table 1,v2,\n"
                   "t,lora,trainable_pct,trainable_pct,0.3,P,1234.5678,Table 1,v2,\n"
                   "t,dora,rte,accuracy,86.0,P,1234.5678,Table 1,v2,\nother,lora,rte,accuracy,1.0,P,1,T,v1,\n")
    paper = load_paper_numbers(csv, "t")
    assert set(paper) == {("t", "lora", "rte"), ("t", "lora", "trainable_pct"), ("t", "dora", "rte")}
    data = aggregate(load_records(runs).complete, "t", columns=["rte"], rows=["lora", "dora"])
    header = Header("cmd", "today", len(data.records), ["abc123"], ["tiny_bert"], ["mrpc", "rte"])
    md = render_markdown(data, paper, header)
    lines = md.splitlines()
    lora = lines.index(next(line for line in lines if line.startswith("| lora | ours")))
    assert "82.00 ± 2.00 (3)" in lines[lora]
    assert lines[lora + 1].startswith("|  | paper | 85.5 |") and "0.3%" in lines[lora + 1]
    assert lines[lora + 2].startswith("|  | Δ | -3.50 |")
    dora = next(line for line in lines if line.startswith("| dora | ours"))
    assert dora.count("missing") >= 3  # rte, mrpc, average and params: no run, never filled
    assert "| smt | ours | 90.00 ± – (1) | missing |" in md  # one seed; mrpc run missing
    rows = {(r["row"], r["column"]): r for r in __import__("csv").DictReader(render_csv(data, paper).splitlines())}
    assert float(rows[("lora", "rte")]["delta"]) == pytest.approx(-3.5) and rows[("dora", "rte")]["n"] == "0"


def test_commonsense_sets_are_columns(tmp_path: Path) -> None:
    for seed, boost in enumerate([0.0, 2.0]):
        write(tmp_path, make_record("commonsense", "smt", seed, {"boolq": 60 + boost, "piqa": 70 + boost}))
    data = aggregate(load_records(tmp_path).complete, "t")
    assert data.columns == ["boolq", "piqa"] and data.cells[("smt", "piqa")].mean == 71.0
    assert data.averages[("smt", AVERAGE)].mean == pytest.approx(66.0)


def test_vtab_group_mean_and_19_task_mean(tmp_path: Path) -> None:
    tasks = [t for g in VTAB_GROUPS.values() for t in g]
    scores = {"natural": 70.0, "specialized": 80.0, "structured": 50.0}
    for group, members in VTAB_GROUPS.items():
        for t in members:
            write(tmp_path, make_record(t, "lora", 0, scores[group]))
    data = aggregate(load_records(tmp_path).complete, "t")
    assert sorted(data.columns) == sorted(tasks)
    assert data.averages[("lora", GROUP_AVERAGE)].mean == pytest.approx(200 / 3)
    assert data.averages[("lora", AVERAGE)].mean == pytest.approx((7 * 70 + 4 * 80 + 8 * 50) / 19)


def test_incomplete_ignored_corrupted_and_partial_refused(runs: Path) -> None:
    running = write(runs, make_record("rte", "lora", 7, 0.0, status="running"))
    failed = write(runs, make_record("rte", "lora", 8, 0.0, status="failed"))
    bad = write(runs, '{"status": "complete", "task": ', name="broken.json")
    partial = make_record("rte", "lora", 9, 50.0)
    del partial["metrics"]["test/accuracy"]
    partial_path = write(runs, partial, name="partial.json")
    no_params = make_record("rte", "lora", 10, 50.0)
    del no_params["params"]
    no_params_path = write(runs, no_params, name="no_params.json")
    recs = load_records(runs)
    assert sorted(recs.incomplete) == sorted([running, failed])
    refused = dict(recs.refused)
    assert set(refused) == {bad, partial_path, no_params_path}
    assert "JSON" in refused[bad] and "test/accuracy" in refused[partial_path] and "params" in refused[no_params_path]
    assert all(r["seed"] < 7 or r["task"] != "rte" for r in recs.complete)  # none of them used
    assert all("_path" in r for r in recs.complete)


def test_duplicate_run_keeps_newest(tmp_path: Path) -> None:
    old = write(tmp_path, make_record("rte", "lora", 0, 10.0, finished="2025-01-01T00:00:00+00:00"), "old.json")
    write(tmp_path, make_record("rte", "lora", 0, 20.0, finished="2025-02-01T00:00:00+00:00"), "new.json")
    data = aggregate(load_records(tmp_path).complete, "t")
    assert data.cells[("lora", "rte")].values == {0: 20.0} and data.superseded == [str(old)]


def test_cell_key() -> None:
    assert cell_key(make_record("rte", "lora r=8", 3, 1.0, table="squad_budget")) == ("squad_budget", "lora r=8",
                                                                                       "rte", 3)
    plain = make_record("rte", "lora", 1, 1.0)
    del plain["config"]["table"]
    assert cell_key(plain) == ("", "lora", "rte", 1)


@pytest.mark.parametrize(("line", "message"), [
    ("t,lora,rte,accuracy,abc,P,1,T,v1,", "not a number"),
    ("t,lora,rte,accuracy,1.0,,1,T,v1,", "paper"),
    ("t,lora,rte,accuracy,1.0,P,1,T,v1,\nt,lora,rte,accuracy,2.0,P,1,T,v1,", "duplicate"),
])
def test_paper_numbers_refuses_bad_rows(tmp_path: Path, line: str, message: str) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text(PAPER_HEADER + line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_paper_numbers(csv)


def test_make_tables_script(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tables = load_script("make_tables")
    write(runs, make_record("rte", "lora", 7, 0.0, status="running"))
    out = tmp_path / "tables"
    assert make_tables.main(["--runs", str(runs), "--out", str(out), "--mini"]) == 0
    md = (out / "t.md").read_text()
    assert "MINI RUN" in md and "not comparable" in md and "7 complete record(s)" in md and "abc123" in md
    assert "Ignored incomplete records (running/failed): 1" in md and "82.00 ± 2.00 (3)" in md
    assert (out / "t.csv").is_file() and str(out / "t.md") in capsys.readouterr().out
    write(runs, "not json", name="corrupt.json")
    assert make_tables.main(["--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "corrupt.json" in err and "JSON" in err


def test_plot_budget_script(tmp_path: Path) -> None:
    plot_budget = load_script("plot_budget")
    for seed in (0, 1):
        for r, (count, score) in {4: (100, 60.0), 8: (200, 62.0), 16: (400, 62.5)}.items():
            write(tmp_path / "runs", make_record("rte", f"lora r={r}", seed, score + seed, trainable=count))
        write(tmp_path / "runs", make_record("rte", "smt", seed, 70.0 + 2 * seed, trainable=300))
    out = tmp_path / "fig"
    series = plot_budget.main(["--runs", str(tmp_path / "runs"), "--table", "t", "--out", str(out)])
    assert (out / "t_budget.png").stat().st_size > 0 and (out / "t_budget.svg").stat().st_size > 0
    lora = series["lora"]
    assert [p.pct for p in lora] == [0.1, 0.2, 0.4]  # sorted by budget
    assert [p.mean for p in lora] == [60.5, 62.5, 63.0] and all(p.n == 2 for p in lora)
    assert series["smt"][0].std == pytest.approx(statistics.stdev([70.0, 72.0]))
