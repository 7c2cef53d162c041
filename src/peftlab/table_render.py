"""Render an aggregated table (:class:`peftlab.tables.TableData`) as markdown and CSV, beside the paper's numbers.

Layout follows the papers: one block of rows per method/budget (``ours``: mean ± std (n seeds); ``paper``: the
reported number; ``Δ``: ours − paper), one column per task, then the average(s) and the trainable parameters.
A cell without a run reads ``missing``; a paper cell that was not retrieved reads ``–``; nothing is ever filled.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from peftlab.tables import AVERAGE, GROUP_AVERAGE, GROUP_PREFIX, PARAMS_PCT, VTAB_GROUPS, Cell, PaperValue, TableData

MISSING = "missing"
ABSENT = "–"
AVERAGE_LABELS = {AVERAGE: "Avg", GROUP_AVERAGE: "Avg (groups)",
                  **{GROUP_PREFIX + g: f"{g.capitalize()} ({len(t)})" for g, t in VTAB_GROUPS.items()}}
AVERAGE_DOCS = {
    AVERAGE: "Avg = plain mean over the table's task columns, computed per seed over the seeds that have every "
             "one of them, else missing (commonsense: the 8 sets; VTAB-1k: the 19-task mean)",
    GROUP_AVERAGE: "Avg (groups) = mean of the Natural/Specialized/Structured group means, per seed over the seeds "
                   "that have all 19 tasks (VPT/SPT convention)",
    **{GROUP_PREFIX + g: f"{g.capitalize()} ({len(t)}) = mean of the {len(t)} {g} tasks, per seed over the seeds "
                         "that have every one of them" for g, t in VTAB_GROUPS.items()},
}
REPORTED_DOCS = {
    "test": "the test split after the last epoch",
    "val_best": "the dev score at the best epoch (every validation metric of the epoch whose selection score, "
                "config.report.select, was best: HF Trainer load_best_model_at_end / metric_for_best_model)",
}


@dataclass
class Header:
    """What the table came from: printed above it."""

    command: str
    date: str
    record_count: int
    commits: list[str]
    models: list[str]
    tasks: list[str]
    mini: bool = False
    note: str | None = None  # a mini table's caveat (conf/experiment/<table>.yaml table.mini.note)
    incomplete: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def fmt_cell(cell: Cell | None, digits: int = 2) -> str:
    """``mean ± std (n)``; std ``–`` for one seed; ``missing`` without a run."""
    if cell is None:
        return MISSING
    std = ABSENT if cell.std is None else f"{cell.std:.{digits}f}"
    return f"{cell.mean:.{digits}f} ± {std} ({cell.n})"


def fmt_count(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_trainable(runs: list[tuple[int, float]]) -> str:
    """``1.33M (0.42%)``; a range when the row's runs differ (e.g. per-task heads)."""
    if not runs:
        return MISSING
    counts, pcts = sorted({c for c, _ in runs}), sorted({p for _, p in runs})
    count = fmt_count(counts[0]) if len(counts) == 1 else f"{fmt_count(counts[0])}–{fmt_count(counts[-1])}"
    pct = f"{pcts[0]:.4g}%" if len(pcts) == 1 else f"{pcts[0]:.4g}–{pcts[-1]:.4g}%"
    return f"{count} ({pct})"


def _paper(paper: dict[tuple[str, str, str], PaperValue], data: TableData, row: str, col: str) -> PaperValue | None:
    return paper.get((data.name, row, col))


def _value_columns(data: TableData) -> list[str]:
    return [*data.columns, *data.average_names]


def _ours(data: TableData, row: str, col: str) -> Cell | None:
    return data.averages.get((row, col)) if col in AVERAGE_LABELS else data.cells.get((row, col))


def table_lines(data: TableData, paper: dict[tuple[str, str, str], PaperValue]) -> list[list[str]]:
    """Header line + for each row: ours / paper / Δ lines (paper lines only where the paper has the row)."""
    cols = _value_columns(data)
    lines = [["Method", "", *[AVERAGE_LABELS.get(c, c) for c in cols], "Trainable params (% of model)"]]
    for row in data.rows:
        ours = [_ours(data, row, c) for c in cols]
        lines.append([row, "ours", *[fmt_cell(c) for c in ours], fmt_trainable(data.trainable.get(row, []))])
        reported = [_paper(paper, data, row, c) for c in cols]
        if not any(reported):
            continue
        pct = _paper(paper, data, row, PARAMS_PCT)
        lines.append(["", "paper", *[ABSENT if p is None else f"{p.value:g}" for p in reported],
                      ABSENT if pct is None else f"{pct.value:g}%"])
        lines.append(["", "Δ", *[ABSENT if p is None or o is None else f"{o.mean - p.value:+.2f}"
                                 for o, p in zip(ours, reported, strict=True)], ""])
    return lines


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(data: TableData, paper: dict[tuple[str, str, str], PaperValue], header: Header) -> str:
    """The table as markdown: provenance header, the table, then footnotes (averages, sources, ignored files)."""
    out = [f"# {data.name}" + (" — MINI RUN" if header.mini else ""), ""]
    if header.mini:
        out += [f"> **MINI RUN** on model(s) {', '.join(header.models)} and data {', '.join(header.tasks)}: "
                "a small offline check of the pipeline, **not comparable with the paper numbers**.", ""]
        out += [f"> {header.note}", ""] if header.note else []
    out += [f"- command: `{header.command}`", f"- built: {header.date}",
            f"- from {header.record_count} complete record(s); git commit(s): {', '.join(header.commits) or 'none'}",
            f"- model(s): {', '.join(header.models) or 'none'}", ""]
    lines = table_lines(data, paper)
    out += [_md_row(lines[0]), _md_row(["---"] * len(lines[0])), *(_md_row(line) for line in lines[1:]), ""]
    out += ["Cells: ours = mean ± sample std (ddof=1; – for one seed) (number of seeds) of the reported metric; "
            "paper = the reported number (– = not reported or not retrieved); Δ = ours − paper; "
            "missing = no complete run.", ""]
    out += [f"- {AVERAGE_DOCS[a]}." for a in data.average_names]
    by_kind: dict[str, list[str]] = {}
    for row, kind in data.reported.items():
        by_kind.setdefault(kind, []).append(row)
    out += [f"- Reported value of rows {', '.join(rows)}: {REPORTED_DOCS[kind]}." for kind, rows in by_kind.items()]
    out += [f"- Protocol: {p}" for p in data.protocols]
    cites = sorted({p.citation for k, p in paper.items() if k[0] == data.name})
    if cites:
        out += ["", "Paper numbers from:", *(f"- {c}" for c in cites)]
    if data.superseded:
        out += ["", f"Superseded (older run of the same row/task/seed, not used): {len(data.superseded)}",
                *(f"- {p}" for p in data.superseded)]
    if header.incomplete:
        out += ["", f"Ignored incomplete records (running/failed): {len(header.incomplete)}",
                *(f"- {p}" for p in header.incomplete)]
    if header.refused:
        out += ["", f"Refused records (not used): {len(header.refused)}",
                *(f"- {p}: {why}" for p, why in header.refused)]
    return "\n".join(out) + "\n"


def csv_rows(data: TableData, paper: dict[tuple[str, str, str], PaperValue]) -> list[dict[str, Any]]:
    """Tidy rows: one per (row, column incl. averages and ``trainable_pct``), ours beside the paper's."""
    out = []
    for row in data.rows:
        for col in _value_columns(data):
            cell, rep = _ours(data, row, col), _paper(paper, data, row, col)
            out.append({
                "table": data.name, "row": row, "column": col, "reported": data.reported.get(row, ""),
                "mean": "" if cell is None else cell.mean,
                "std": "" if cell is None or cell.std is None else cell.std,
                "n": 0 if cell is None else cell.n,
                "seeds": "" if cell is None else " ".join(str(s) for s in sorted(cell.values)),
                "paper": "" if rep is None else rep.value,
                "delta": "" if rep is None or cell is None else cell.mean - rep.value,
                "paper_source": "" if rep is None else rep.citation,
            })
        runs = data.trainable.get(row, [])
        rep = _paper(paper, data, row, PARAMS_PCT)
        out.append({"table": data.name, "row": row, "column": PARAMS_PCT, "reported": "",
                    "mean": sum(p for _, p in runs) / len(runs) if runs else "", "std": "", "n": len(runs),
                    "seeds": "", "paper": "" if rep is None else rep.value,
                    "delta": "" if rep is None or not runs else sum(p for _, p in runs) / len(runs) - rep.value,
                    "paper_source": "" if rep is None else rep.citation})
    return out


def render_csv(data: TableData, paper: dict[tuple[str, str, str], PaperValue]) -> str:
    rows = csv_rows(data, paper)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["table"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
