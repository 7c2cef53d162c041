"""VTAB-1k summary: per-task top-1, group means, and the two averages papers report.

Papers disagree on "the VTAB average" (protocols.md §4.4): VPT/SPT/SNELL/DyT report the mean of the
three GROUP means (Full FT 68.96), SSF/NOAH-style tables the plain mean over the 19 TASKS (Full FT
65.57). We always print both, labelled ``mean_of_group_means`` and ``mean_19_tasks``.

Usage (tables from complete run records only)::

    python -m peftlab.tasks.vision.report results/runs            # every method × model found
    python -m peftlab.tasks.vision.report results/runs --method lora --model vit_b16_in21k
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from peftlab.tasks.vision.vtab import GROUPS, VTAB_TASKS


def vtab_summary(top1: Mapping[str, float]) -> dict[str, float | None]:
    """Group means and both overall means from ``{task folder: top-1 %}``.

    A group mean needs every task of its group, an overall mean every one of the 19 tasks; otherwise
    the value is None (a partial average is not comparable to published numbers).
    """
    unknown = sorted(set(top1) - set(VTAB_TASKS))
    if unknown:
        raise ValueError(f"not VTAB-1k tasks: {unknown}; valid: {sorted(VTAB_TASKS)}")
    out: dict[str, float | None] = {}
    for group in GROUPS:
        tasks = [t for t, info in VTAB_TASKS.items() if info.group == group]
        out[group] = mean(top1[t] for t in tasks) if all(t in top1 for t in tasks) else None
    complete = len(top1) == len(VTAB_TASKS)
    groups = [out[g] for g in GROUPS]
    out["mean_of_group_means"] = mean(groups) if complete and None not in groups else None  # type: ignore[arg-type]
    out["mean_19_tasks"] = mean(top1.values()) if complete else None
    return out


def collect(results_dir: Path) -> dict[tuple[str, str], dict[str, list[float]]]:
    """``{(method, model): {task folder: [test top-1 of each complete seed]}}`` from VTAB run records."""
    found: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(results_dir.rglob("*.json")):
        record: dict[str, Any] = json.loads(path.read_text())
        task_cfg = record.get("config", {}).get("task", {})
        if record.get("status") != "complete" or task_cfg.get("family") != "vtab":
            continue
        value = record.get("metrics", {}).get("test/top1")
        if value is not None:
            found[(record["method"], record["model"])][task_cfg["folder"]].append(float(value))
    return found


def markdown_table(rows: Mapping[tuple[str, str], Mapping[str, list[float]]]) -> str:
    """One row per (method, model): per-task mean over seeds, group means, both overall means ("–" = missing)."""
    tasks = list(VTAB_TASKS)
    header = ["method", "model", *(VTAB_TASKS[t].title for t in tasks), *GROUPS, "mean of group means",
              "mean of 19 tasks", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    for (method, model), per_task in sorted(rows.items()):
        top1 = {t: mean(v) for t, v in per_task.items()}
        summary = vtab_summary(top1)
        seeds = sorted({len(v) for v in per_task.values()})
        cells = [method, model, *(fmt(top1.get(t)) for t in tasks), *(fmt(summary[g]) for g in GROUPS),
                 fmt(summary["mean_of_group_means"]), fmt(summary["mean_19_tasks"]), "/".join(map(str, seeds))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--method")
    parser.add_argument("--model")
    args = parser.parse_args(argv)
    rows = {k: v for k, v in collect(args.results_dir).items()
            if (args.method in (None, k[0])) and (args.model in (None, k[1]))}
    print(markdown_table(rows) if rows else f"no complete VTAB-1k records under {args.results_dir}")


if __name__ == "__main__":
    main()
