"""Paper tables from run records: load and check records, aggregate seeds, join the papers' numbers.

A run's table cell (design fixed for issue 9): table = ``config.table.name``, row = ``config.table.row``,
column = ``record["task"]``, seed = ``record["seed"]``, value = ``metrics["<reported>/" + main_metric]``, where
``<reported>`` is the run's ``config.report.value``: ``test`` (the test split after the last epoch; the default) or
``val_best`` (every validation metric at the best epoch: the released GLUE scripts' ``load_best_model_at_end``).
A task that scores several evaluation sets in one run (commonsense: ``config.task.eval_sets``, metrics
``<reported>/accuracy/<set>``) gives one column per set instead, as the papers lay those tables out.

Only ``complete`` records are results; ``running``/``failed`` ones are listed, never used; a file that is not a
valid record (bad JSON, or ``complete`` but missing what a cell needs) is refused with the reason, never used.
Rendering lives in :mod:`peftlab.table_render`.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError

STATUSES = ("running", "complete", "failed")
PAPER_COLUMNS = ("table", "row", "task", "metric", "value", "paper", "arxiv", "source_table", "version", "note")
CITATION_COLUMNS = ("paper", "arxiv", "source_table", "version")
AVERAGE = "average"  # plain mean over the table's task columns
GROUP_AVERAGE = "average_groups"  # mean of the group means (VTAB-1k convention of VPT/SPT/NOAH tables)
GROUP_PREFIX = "average_"  # + VTAB group name: that group's mean (average_natural, ...)
REPORTED = ("test", "val_best")  # config.report.value: which metrics a cell reads
PARAMS_PCT = "trainable_pct"  # a paper CSV's reported trainable-parameter % of a row (not a task)
# Columns that count as one task in the plain average (GLUE "All Avg": MNLI = mean of matched and mismatched).
SAME_TASK = {"mnli_mm": "mnli"}

# VTAB-1k groups (Zhai et al. 2019, arXiv 1910.04867; task_adaptation's split definitions), by our task names
# (conf/task/vtab/*.yaml).
VTAB_GROUPS: dict[str, tuple[str, ...]] = {
    "natural": ("vtab_cifar", "vtab_caltech101", "vtab_dtd", "vtab_oxford_flowers102", "vtab_oxford_iiit_pet",
                "vtab_svhn", "vtab_sun397"),
    "specialized": ("vtab_patch_camelyon", "vtab_eurosat", "vtab_resisc45", "vtab_diabetic_retinopathy"),
    "structured": ("vtab_clevr_count", "vtab_clevr_dist", "vtab_dmlab", "vtab_kitti", "vtab_dsprites_loc",
                   "vtab_dsprites_ori", "vtab_smallnorb_azi", "vtab_smallnorb_ele"),
}


@dataclass
class Records:
    """Record files of a runs directory, sorted into results, non-results and refusals."""

    complete: list[dict[str, Any]] = field(default_factory=list)  # each with "_path"
    incomplete: list[Path] = field(default_factory=list)  # status running/failed
    refused: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)

    def commits(self) -> list[str]:
        """Distinct git commits (``+dirty`` when the tree had changes) of the complete records."""
        out = set()
        for r in self.complete:
            git = r.get("git") or {}
            out.add(f"{git.get('commit') or 'unknown'}{'+dirty' if git.get('dirty') else ''}")
        return sorted(out)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _problem(record: Any) -> str | None:
    """Why a ``complete`` record cannot give a table cell, or None when it can."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in ("task", "seed", "main_metric", "metrics", "params", "config") if k not in record]
    if missing:
        return f"complete but missing field(s) {missing}"
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        return f"seed must be an integer, got {record['seed']!r}"
    metrics, params = record["metrics"], record["params"]
    if not isinstance(metrics, dict) or not isinstance(params, dict) or not isinstance(record["config"], dict):
        return "metrics, params and config must be JSON objects"
    if reported(record) not in REPORTED:
        return f"config.report.value must be one of {list(REPORTED)}, got {reported(record)!r}"
    for key in _metric_keys(record):
        if not _is_number(metrics.get(key)):
            return f"complete but metric '{key}' is missing or not a number"
    for key in ("trainable", "trainable_pct"):
        if not _is_number(params.get(key)):
            return f"complete but params['{key}'] is missing or not a number"
    table = record["config"].get("table")
    if table is not None and not (isinstance(table, dict) and all(isinstance(table.get(k), str) and table[k]
                                                                     for k in ("name", "row"))):
        return f"config.table must have non-empty string 'name' and 'row', got {table!r}"
    return None


def _eval_sets(record: dict[str, Any]) -> list[str]:
    task_cfg = record.get("config", {}).get("task") or {}
    sets = task_cfg.get("eval_sets") if isinstance(task_cfg, dict) else None
    return [str(s) for s in sets] if isinstance(sets, list) else []


def reported(record: dict[str, Any]) -> str:
    """Which value a record's cells read: its ``config.report.value`` (``test`` for records without one)."""
    report = record.get("config", {}).get("report") or {}
    return str(report.get("value", "test")) if isinstance(report, dict) else "test"


def _metric_keys(record: dict[str, Any]) -> list[str]:
    """The metrics a record's cells read: one per evaluation set, else the main metric."""
    prefix, sets = reported(record), _eval_sets(record)
    if sets:
        return [f"{prefix}/accuracy/{s}" for s in sets]
    return [f"{prefix}/{record['main_metric']}"]


def load_records(runs_dir: str | Path) -> Records:
    """Read every ``*.json`` record under ``runs_dir`` (recursively; hidden temp files skipped).

    Raises:
        ConfigError: ``runs_dir`` does not exist.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(f"runs directory '{root}' does not exist (runs write records under paths.results_dir)")
    out = Records()
    for path in sorted(p for p in root.rglob("*.json") if not p.name.startswith(".")):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            out.refused.append((path, f"not a readable JSON record ({err})"))
            continue
        status = record.get("status") if isinstance(record, dict) else None
        if status not in STATUSES:
            out.refused.append((path, f"status must be one of {list(STATUSES)}, got {status!r}"))
        elif status != "complete":
            out.incomplete.append(path)
        elif (why := _problem(record)) is not None:
            out.refused.append((path, why))
        else:
            out.complete.append({**record, "_path": str(path)})
    return out


def cell_key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    """``(table, row, task, seed)`` of a run; a run outside any table gets table ``""`` and row = its method."""
    table = record.get("config", {}).get("table") or {}
    return (str(table.get("name", "")), str(table.get("row", record.get("method", ""))),
            str(record["task"]), int(record["seed"]))


def table_of(path: str | Path) -> str | None:
    """Table name of a record file (e.g. an incomplete one), ``""`` outside any table, None if unreadable."""
    try:
        record = json.loads(Path(path).read_text())
        table = record.get("config", {}).get("table") or {}
        return str(table.get("name", ""))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None


def record_values(record: dict[str, Any]) -> dict[str, float]:
    """Column → value of one complete record (one column per evaluation set for multi-set tasks)."""
    columns = _eval_sets(record) or [str(record["task"])]
    return {c: float(record["metrics"][k]) for c, k in zip(columns, _metric_keys(record), strict=True)}


# ---------------------------------------------------------------------------------------------------- aggregation
@dataclass
class Cell:
    """Our result for one (row, column): statistics over seeds."""

    values: dict[int, float]  # seed → value

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1) over seeds; None for a single seed."""
        return statistics.stdev(self.values.values()) if self.n > 1 else None


@dataclass
class TableData:
    """One table's aggregated results: rows × columns of cells (absent = missing run)."""

    name: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    trainable: dict[str, list[tuple[int, float]]]  # row → (trainable count, % of model) per run
    records: list[dict[str, Any]]  # the records used
    superseded: list[str] = field(default_factory=list)  # older duplicates of a (row, task, seed), not used
    averages: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (row, one of average_names) → cell
    reported: dict[str, str] = field(default_factory=dict)  # row → its records' config.report.value
    protocols: list[str] = field(default_factory=list)  # the records' config.table.protocol statements

    @property
    def average_names(self) -> list[str]:
        """Average columns: VTAB-1k tables show the three group means, their mean and the 19-task mean."""
        if is_vtab(self.columns):
            return [*(GROUP_PREFIX + g for g in VTAB_GROUPS), GROUP_AVERAGE, AVERAGE]
        return [AVERAGE]


def is_vtab(columns: Sequence[str]) -> bool:
    """Every column is a VTAB-1k task (then the table is framed by all 19 and gets the group means)."""
    tasks = {t for g in VTAB_GROUPS.values() for t in g}
    return bool(columns) and all(c in tasks for c in columns)


def _seed_means(row: str, units: list[list[str]], cells: dict[tuple[str, str], Cell]) -> dict[int, float]:
    """Per seed that has a value in EVERY column of ``units``: the mean over units of the mean within each unit."""
    needed = [c for unit in units for c in unit]
    seed_sets = [set(cells[(row, c)].values) if (row, c) in cells else set() for c in needed]
    seeds = sorted(set.intersection(*seed_sets)) if seed_sets else []
    return {s: statistics.fmean(statistics.fmean(cells[(row, c)].values[s] for c in unit) for unit in units)
            for s in seeds}


def _average_cells(row: str, columns: list[str], cells: dict[tuple[str, str], Cell]) -> dict[str, Cell]:
    """Per-seed averages, each only over seeds that have every task it names (else the average is missing).

    ``AVERAGE`` is the plain mean over the table's columns (commonsense/GLUE convention; VTAB "Mean19"), MNLI's
    matched and mismatched columns counting as one task (AdaLoRA's GLUE "All Avg"; its QQP mean(acc, F1) is not
    reproduced: our QQP column is accuracy only). VTAB tables (framed by all 19 tasks) also get each group's mean
    (``average_<group>``: every task of the group) and ``GROUP_AVERAGE``, the mean of the three group means
    (VPT/SPT convention: all 19 tasks).
    """
    units: dict[str, list[str]] = {}
    for c in columns:
        units.setdefault(SAME_TASK.get(c, c), []).append(c)
    means = {AVERAGE: _seed_means(row, list(units.values()), cells)}
    if is_vtab(columns):
        means.update({GROUP_PREFIX + g: _seed_means(row, [[t] for t in tasks], cells)
                      for g, tasks in VTAB_GROUPS.items()})
        means[GROUP_AVERAGE] = _seed_means(row, [list(tasks) for tasks in VTAB_GROUPS.values()], cells)
    return {name: Cell(values) for name, values in means.items() if values}


def aggregate(records: Iterable[dict[str, Any]], table: str, columns: Sequence[str] = (),
              rows: Sequence[str] = ()) -> TableData:
    """Aggregate the complete records of ``table`` into cells (mean, sample std, n over seeds).

    ``columns``/``rows`` fix the order and make expected cells visible as missing (the experiment's tasks, the
    paper's CSV); columns and rows seen only in the records are appended; a VTAB-1k table is framed by all 19
    tasks. A (row, task, seed) run twice keeps the newest record (by ``finished``); the older ones are listed in
    ``superseded``.

    Raises:
        ConfigError: a row's records read different values (``config.report.value``): one row, one protocol.
    """
    newest: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    superseded: list[str] = []
    for rec in sorted((r for r in records if cell_key(r)[0] == table), key=lambda r: str(r.get("finished", ""))):
        key = cell_key(rec)
        if key in newest:
            superseded.append(newest[key]["_path"])
        newest[key] = rec
    used = list(newest.values())
    cols, row_names = list(columns), list(rows)
    values: dict[tuple[str, str], dict[int, float]] = {}
    trainable: dict[str, list[tuple[int, float]]] = {}
    kinds: dict[str, set[str]] = {}
    for rec in used:
        _, row, _, seed = cell_key(rec)
        if row not in row_names:
            row_names.append(row)
        trainable.setdefault(row, []).append((int(rec["params"]["trainable"]), float(rec["params"]["trainable_pct"])))
        kinds.setdefault(row, set()).add(reported(rec))
        for col, value in record_values(rec).items():
            if col not in cols:
                cols.append(col)
            values.setdefault((row, col), {})[seed] = value
    mixed = {row: sorted(k) for row, k in kinds.items() if len(k) > 1}
    if mixed:
        raise ConfigError(f"table '{table}': row(s) {mixed} mix reported values (config.report.value); the records "
                          "of one row must follow one protocol: rerun them or move the others away")
    if is_vtab(cols):
        cols = [*(t for g in VTAB_GROUPS.values() for t in g)]
    cells = {k: Cell(v) for k, v in values.items()}
    protocols = sorted({str(p) for r in used if (p := (r["config"].get("table") or {}).get("protocol"))})
    data = TableData(table, row_names, cols, cells, trainable, used, superseded,
                     reported={row: k.pop() for row, k in kinds.items()}, protocols=protocols)
    for row in row_names:
        for name, cell in _average_cells(row, cols, cells).items():
            data.averages[(row, name)] = cell
    return data


# ---------------------------------------------------------------------------------------------------- paper numbers
@dataclass(frozen=True)
class PaperValue:
    """One number a paper reports, with where it comes from."""

    value: float
    metric: str
    citation: str  # "paper (arXiv id) source_table, version"
    note: str = ""


def load_paper_numbers(path: str | Path, table: str | None = None) -> dict[tuple[str, str, str], PaperValue]:
    """``(table, row, task) → PaperValue`` from a ``results/paper_numbers`` CSV (optionally one table only).

    Raises:
        ConfigError: missing file or columns, an uncited row, a non-numeric value, or a duplicate (table, row, task);
            the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"paper numbers file '{path}' does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PAPER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {missing}; required: {list(PAPER_COLUMNS)}")
        out: dict[tuple[str, str, str], PaperValue] = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            uncited = [c for c in ("table", "row", "task", "metric", *CITATION_COLUMNS) if not (row[c] or "").strip()]
            if uncited:
                raise ConfigError(f"{where}: empty {uncited}; every paper number needs its cell and its citation")
            try:
                value = float(row["value"])
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: value {row['value']!r} is not a number") from None
            if not math.isfinite(value):
                raise ConfigError(f"{where}: value {row['value']!r} is not finite")
            key = (row["table"], row["row"], row["task"])
            if key in out:
                raise ConfigError(f"{where}: duplicate (table, row, task) {key}")
            if table is None or row["table"] == table:
                cite = f"{row['paper']} (arXiv {row['arxiv']}) {row['source_table']}, {row['version']}"
                out[key] = PaperValue(value, row["metric"], cite, row["note"] or "")
    return out


# ---------------------------------------------------------------------------------------------------- one table
def is_mini(runs: Path, flag: bool) -> bool:
    """A mini run: asked for, or records read from a ``mini`` directory (results/mini/runs)."""
    return flag or "mini" in runs.resolve().parts


def paper_file(records: list[dict[str, Any]], table: str, paper_dir: Path) -> Path | None:
    """The paper-numbers CSV of ``table``: the records' ``config.table.paper_numbers``, else ``<table>.csv``."""
    names = {r["config"]["table"].get("paper_numbers") for r in records if cell_key(r)[0] == table} - {None, ""}
    if len(names) > 1:
        raise ConfigError(f"table '{table}': records name different paper_numbers files {sorted(names)}")
    if names:
        return paper_dir / names.pop()  # named explicitly: a missing file is an error (load_paper_numbers)
    default = paper_dir / f"{table}.csv"
    return default if default.is_file() else None


def table_paper_numbers(named: Path | None, table: str,
                        paper_dir: Path) -> dict[tuple[str, str, str], PaperValue]:
    """The paper numbers of ``table`` from every CSV under ``paper_dir`` (the table's own file and e.g. the
    related methods' rows); ``named`` must exist. A (table, row, task) given by two files is refused."""
    files = sorted(set(paper_dir.glob("*.csv")) | ({named} if named is not None else set()))
    out: dict[tuple[str, str, str], PaperValue] = {}
    for path in files:
        for key, value in load_paper_numbers(path, table).items():
            if key in out:
                raise ConfigError(f"{path}: {key} is also given by another paper-numbers file")
            out[key] = value
    return out


def build_table(recs: Records, table: str, paper_dir: Path, mini: bool, columns: Sequence[str] = (),
                ) -> tuple[TableData, dict[tuple[str, str, str], PaperValue]]:
    """Aggregate one table, framed by ``columns`` (the experiment's tasks, ``reproduce.table_columns``) and, for a
    full table, the paper's rows and columns. A mini table keeps only its own rows and shows no paper numbers: its
    model and data are not the paper's, so a paper value or Δ beside it would mislead."""
    if mini:
        return aggregate(recs.complete, table, columns=columns, rows=[]), {}
    paper = table_paper_numbers(paper_file(recs.complete, table, paper_dir), table, paper_dir)
    rows = list(dict.fromkeys(k[1] for k in paper))
    cols = [c for c in dict.fromkeys([*columns, *(k[2] for k in paper)]) if not c.startswith(("average", "trainable"))]
    return aggregate(recs.complete, table, columns=cols, rows=rows), paper
