"""Score vs trainable parameters (log x), one line per method: SMT's plateau figure from run records.

Usage:
    python scripts/plot_budget.py --table smt_commonsense_budget   # → results/figures/<table>_budget.{png,svg}
    python scripts/plot_budget.py --runs results/mini/runs --table squad_budget   # mini → results/figures/mini/
    python scripts/plot_budget.py --table vtab --column average_groups       # which score column to plot

Each row of the table (e.g. ``lora r=8``) is one point: x = its trainable parameters in % of the model (mean over
its runs), y = mean over seeds of the chosen column (default: the table's single task, else ``average``, the plain
mean over its columns, per seed), with a ±1 sample-std band; rows are joined per method (``record["method"]``).
The paper's numbers for the same rows, where its CSV has both the score and ``trainable_pct``, are drawn dashed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from peftlab.errors import ConfigError  # noqa: E402
from peftlab.tables import (  # noqa: E402
    AVERAGE,
    PARAMS_PCT,
    Cell,
    PaperValue,
    Records,
    TableData,
    build_table,
    cell_key,
    is_mini,
    load_records,
)


@dataclass(frozen=True)
class Point:
    """One row of the table on the budget plot."""

    row: str
    pct: float  # trainable parameters, % of the model
    count: float  # trainable parameters
    mean: float
    std: float | None
    n: int


def _column_runs(data: TableData, row: str, column: str) -> list[tuple[int, float]]:
    """(trainable, %) of the row's runs that produced ``column`` (a table may hold tasks on different models)."""
    return [(int(r["params"]["trainable"]), float(r["params"]["trainable_pct"])) for r in data.records
            if cell_key(r)[1] == row and (r["task"] == column or any(k.endswith(f"/{column}") for k in r["metrics"]))]


def series(data: TableData, column: str) -> dict[str, list[Point]]:
    """Method → its rows as points sorted by budget (rows without a run of ``column`` are left out)."""
    method_of = {cell_key(r)[1]: str(r["method"]) for r in data.records}
    out: dict[str, list[Point]] = {}
    for row in data.rows:
        cell: Cell | None = data.averages.get((row, column)) or data.cells.get((row, column))
        runs = _column_runs(data, row, column) or data.trainable.get(row, [])
        if cell is None or not runs:
            continue
        pct = sum(p for _, p in runs) / len(runs)
        count = sum(c for c, _ in runs) / len(runs)
        out.setdefault(method_of[row], []).append(Point(row, pct, count, cell.mean, cell.std, cell.n))
    return {m: sorted(points, key=lambda p: p.pct) for m, points in out.items()}


def paper_series(paper: dict[tuple[str, str, str], PaperValue], table: str,
                 column: str) -> dict[str, list[tuple[float, float]]]:
    """Method → (trainable %, score) of the paper's rows that report both."""
    out: dict[str, list[tuple[float, float]]] = {}
    for (t, row, col), value in paper.items():
        pct = paper.get((t, row, PARAMS_PCT))
        if t == table and col == column and pct is not None:
            out.setdefault(row.split()[0], []).append((pct.value, value.value))
    return {m: sorted(v) for m, v in out.items()}


def plot(points: dict[str, list[Point]], reported: dict[str, list[tuple[float, float]]], title: str, footer: str,
         stem: Path) -> list[Path]:
    """Draw and save ``stem``.png and .svg; return their paths."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (method, pts) in enumerate(sorted(points.items())):
        color = f"C{i}"
        x, y = [p.pct for p in pts], [p.mean for p in pts]
        std = [p.std or 0.0 for p in pts]
        ax.plot(x, y, "o-", color=color, label=f"{method} (ours, n={'/'.join(str(p.n) for p in pts)})")
        low = [m - s for m, s in zip(y, std, strict=True)]
        high = [m + s for m, s in zip(y, std, strict=True)]
        ax.fill_between(x, low, high, color=color, alpha=0.2)
        for p in pts:
            label = p.row[len(method):].strip() if p.row.startswith(method) else p.row
            if label:
                ax.annotate(label, (p.pct, p.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if method in reported:
            px, py = zip(*reported.pop(method), strict=True)
            ax.plot(px, py, "s--", color=color, mfc="none", label=f"{method} (paper)")
    for j, (method, vals) in enumerate(sorted(reported.items()), start=len(points)):
        px, py = zip(*vals, strict=True)
        ax.plot(px, py, "s--", color=f"C{j}", mfc="none", label=f"{method} (paper)")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of model, log scale)")
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, footer, fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict[str, list[Point]]:
    """Plot one table's budget figure; return the plotted points (method → points)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--table", required=True, help="table name (config.table.name of its runs)")
    parser.add_argument("--column", default=None, help="task or average column to plot (default: see above)")
    parser.add_argument("--out", type=Path, default=None, help="default results/figures (mini: results/figures/mini)")
    parser.add_argument("--paper-dir", type=Path, default=Path("results/paper_numbers"))
    parser.add_argument("--mini", action="store_true", help="label as MINI RUN (automatic for a 'mini' runs dir)")
    args = parser.parse_args(argv)
    command = "python scripts/plot_budget.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        recs = load_records(args.runs)
        for path, why in recs.refused:
            raise ConfigError(f"refused record {path}: {why} (fix or move it)")
        mini = is_mini(args.runs, args.mini)
        data, paper = build_table(recs, args.table, args.paper_dir, mini)
        column = args.column or (data.columns[0] if len(data.columns) == 1 else AVERAGE)
        points = series(data, column)
        if not points:
            raise ConfigError(f"table '{args.table}': no complete runs with a '{column}' value under {args.runs}")
    except ConfigError as err:
        raise SystemExit(f"[plot_budget] error: {err}") from None
    models = ", ".join(sorted({str(r.get("model")) for r in data.records}))
    title = f"{args.table}: {column} vs trainable parameters" + (f"\nMINI RUN ({models}; not comparable with the "
                                                                  "paper)" if mini else f" ({models})")
    footer = (f"{command} | {len(data.records)} records, commits "
              f"{', '.join(c[:10] for c in Records(complete=data.records).commits())}")
    out = args.out or Path("results/figures") / ("mini" if mini else "")
    reported = {} if mini else paper_series(paper, args.table, column)
    for path in plot(points, reported, title, footer, out / f"{args.table}_budget"):
        print(f"[plot_budget] wrote {path}")
    return points


if __name__ == "__main__":
    main()
