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
from peftlab.tables import (
    AVERAGE,
    GROUP_AVERAGE,
    GROUP_PREFIX,
    VTAB_GROUPS,
    aggregate,
    cell_key,
    load_paper_numbers,
    load_records,
)

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
                total: int = 100_000, finished: str = "2025-01-01T00:00:00+00:00",
                val_best: float | None = None) -> dict[str, Any]:
    """A run record as src/peftlab/train.py writes it (the fields tables read); ``val_best``: a run whose
    ``config.report.value`` is ``val_best``, with that best-epoch dev value."""
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
    if val_best is not None:
        rec["config"]["report"] = {"value": "val_best", "select": None}
        metrics[f"val_best/{main}"] = val_best
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


def test_cells_read_the_value_their_protocol_reports(tmp_path: Path) -> None:
    """A val_best run (the released GLUE scripts' best dev epoch) is read from val_best/<metric>, not test/."""
    for seed in (0, 1):
        write(tmp_path, make_record("rte", "lora", seed, 70.0, val_best=80.0 + seed))
    write(tmp_path, make_record("rte", "smt", 0, 60.0))
    data = aggregate(load_records(tmp_path).complete, "t")
    assert data.cells[("lora", "rte")].values == {0: 80.0, 1: 81.0} and data.cells[("smt", "rte")].values == {0: 60.0}
    assert data.reported == {"lora": "val_best", "smt": "test"}
    md = render_markdown(data, {}, Header("cmd", "today", 3, [], [], ["rte"]))
    assert "Reported value of rows lora: the dev score at the best epoch" in md
    assert "Reported value of rows smt: the test split after the last epoch" in md
    rows = {(r["row"], r["column"]): r for r in __import__("csv").DictReader(render_csv(data, {}).splitlines())}
    assert rows[("lora", "rte")]["reported"] == "val_best" and rows[("smt", "rte")]["reported"] == "test"


def test_a_row_mixing_reported_values_is_refused(tmp_path: Path) -> None:
    write(tmp_path, make_record("rte", "lora", 0, 70.0, val_best=80.0))
    write(tmp_path, make_record("mrpc", "lora", 0, 70.0))
    with pytest.raises(ConfigError, match=r"row\(s\) \{'lora': \['test', 'val_best'\]\} mix reported values"):
        aggregate(load_records(tmp_path).complete, "t")


def test_vtab_averages_only_over_every_task_they_name(tmp_path: Path) -> None:
    """3 VTAB records: the table is framed by the 19 tasks and shows no average (not a partial '19-task mean');
    a group mean appears once every task of that group is there."""
    natural = VTAB_GROUPS["natural"]
    for t in natural[:3]:
        write(tmp_path, make_record(t, "lora", 0, 40.0 + natural.index(t) * 5))
    data = aggregate(load_records(tmp_path).complete, "t")
    assert len(data.columns) == 19 and data.averages == {}
    assert data.average_names == [*(GROUP_PREFIX + g for g in VTAB_GROUPS), GROUP_AVERAGE, AVERAGE]
    md = render_markdown(data, {}, Header("cmd", "today", 3, [], [], list(natural[:3])))
    assert "| Natural (7) | Specialized (4) | Structured (8) | Avg (groups) | Avg |" in md
    assert md.count("missing") >= 16 + 5  # 16 absent tasks + 5 averages
    for t in natural[3:]:
        write(tmp_path, make_record(t, "lora", 0, 70.0))
    data = aggregate(load_records(tmp_path).complete, "t")
    assert set(data.averages) == {("lora", GROUP_PREFIX + "natural")}
    assert data.averages[("lora", GROUP_PREFIX + "natural")].mean == pytest.approx((40 + 45 + 50 + 4 * 70) / 7)


def test_make_tables_frames_a_table_by_its_experiment_tasks(tmp_path: Path) -> None:
    """A table without paper numbers still names the experiment's columns: no average over the present ones."""
    make_tables = load_script("make_tables")
    write(tmp_path / "runs", make_record("squad", "lora r=1", 42, 90.0, table="capaboost_squad"))
    out = tmp_path / "tables"
    assert make_tables.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--paper-dir", str(tmp_path)]) == 0
    (line,) = [x for x in (out / "capaboost_squad.md").read_text().splitlines() if x.startswith("| lora r=1 | ours")]
    assert line.startswith("| lora r=1 | ours | 90.00 ± – (1) | missing | missing |"), line  # squad, squad_v2, Avg


def test_a_mini_table_says_what_its_experiment_file_notes(tmp_path: Path) -> None:
    """smt_commonsense's mini columns cannot rank the methods: the table says so (table.mini.note)."""
    make_tables = load_script("make_tables")
    write(tmp_path / "runs", make_record("commonsense_synthetic", "lora", 0, {"syn_boolq": 0.0},
                                         table="smt_commonsense"))
    out = tmp_path / "tables"
    assert make_tables.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--mini"]) == 0
    text = (out / "smt_commonsense.md").read_text()
    assert "> **MINI RUN**" in text and "> The commonsense columns cannot rank the methods: the tiny LLaMA" in text


def test_vision_report_one_value_per_row_task_seed(tmp_path: Path) -> None:
    """vision.report: a rerun of the same task and seed replaces the older run (not a second seed); runs whose
    settings differ are different rows, labelled with what differs."""
    from peftlab.tasks.vision.report import collect, markdown_table

    def vtab(folder: str, seed: int, value: float, lr: float, finished: str) -> dict[str, Any]:
        rec = make_record(f"vtab_{folder}", "lora", seed, value, finished=finished)
        rec["metrics"] = {"test/top1": value}
        rec["main_metric"] = "top1"
        rec["config"]["task"] = {"name": f"vtab_{folder}", "family": "vtab", "folder": folder, "num_classes": 47}
        rec["config"]["method"] = {"name": "lora", "lr": lr, "mask_seed": seed}
        return rec

    write(tmp_path, vtab("dtd", 0, 50.0, 1e-3, "2025-01-01"), "a.json")
    write(tmp_path, vtab("dtd", 0, 60.0, 1e-3, "2025-01-02"), "b.json")  # rerun of seed 0: replaces 50
    write(tmp_path, vtab("dtd", 1, 64.0, 1e-3, "2025-01-03"), "c.json")
    write(tmp_path, vtab("dtd", 0, 10.0, 5e-2, "2025-01-04"), "d.json")  # other lr: another row
    found = collect(tmp_path)
    assert found == {"lora tiny_bert (method.lr=0.001)": {"dtd": {0: 60.0, 1: 64.0}},
                     "lora tiny_bert (method.lr=0.05)": {"dtd": {0: 10.0}}}
    line = next(x for x in markdown_table(found).splitlines() if "method.lr=0.001" in x)
    assert "| 62.0 |" in line and line.endswith("| 2 |")
