"""VTAB-1k summary: per-task top-1, group means, and the two averages papers report.

Papers disagree on "the VTAB average": VPT (Jia et al. 2022), SPT, SNELL and DyT (arXiv 2403.11808, Table 3)
report the mean of the three GROUP means (Full FT 68.96), SSF/NOAH-style tables the plain mean over the 19 TASKS
(Full FT 65.57). We always print both, labelled ``mean_of_group_means`` and ``mean_19_tasks``.

Usage (tables from complete run records only)::

    python -m peftlab.tasks.vision.report results/runs            # every method × model × settings found
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

from peftlab.reproduce import leaves
from peftlab.tables import load_records
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


# Keys that name the task (not a setting) or follow the seed: they may differ within one row.
IDENTITY = ("task.name", "task.folder", "task.num_classes", "task.data_root")
SETTINGS = ("method", "optim", "task", "model", "report")


def _settings(record: dict[str, Any]) -> dict[str, str]:
    """The run's settings as dotted key → JSON value: method, optim, task, model, report and the precision,
    without the task's identity and the seed-derived keys (``seed``, ``mask_seed``, ...)."""
    config = record["config"]
    flat = leaves({k: config.get(k) for k in SETTINGS if isinstance(config.get(k), dict)})
    flat["trainer.precision"] = (config.get("trainer") or {}).get("precision")
    return {k: json.dumps(v, sort_keys=True) for k, v in flat.items()
            if k not in IDENTITY and not k.rsplit(".", 1)[-1].endswith("seed")}


def collect(results_dir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{row: {task folder: {seed: test top-1}}}`` from the complete VTAB run records under ``results_dir``.

    A row is one method × model × settings: runs of a method and model whose settings differ (lr, epochs, α, ...)
    are different rows, labelled with the settings that differ (``lora tiny_vit (method.lr=0.001)``). A row has one
    value per (task, seed): a rerun of the same task and seed replaces the older record (by ``finished``), it is not
    another seed. Records that are not complete or not valid are skipped (:func:`peftlab.tables.load_records`).
    """
    records = [r for r in load_records(results_dir).complete
               if (r["config"].get("task") or {}).get("family") == "vtab" and "test/top1" in r["metrics"]]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(str(record["method"]), str(record["model"]))].append(record)
    found: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for (method, model), members in groups.items():
        settings = [_settings(r) for r in members]
        varying = sorted(k for k in set().union(*settings) if len({s.get(k) for s in settings}) > 1)
        for record, setting in sorted(zip(members, settings, strict=True), key=lambda x: str(x[0].get("finished", ""))):
            differ = ", ".join(f"{k}={setting.get(k, 'unset')}" for k in varying)
            row = f"{method} {model}" + (f" ({differ})" if differ else "")
            found[row][record["config"]["task"]["folder"]][int(record["seed"])] = float(record["metrics"]["test/top1"])
    return found


def markdown_table(rows: Mapping[str, Mapping[str, Mapping[int, float]]]) -> str:
    """One line per row: per-task mean over seeds, group means, both overall means ("–" = missing), seeds."""
    tasks = list(VTAB_TASKS)
    header = ["row", *(VTAB_TASKS[t].title for t in tasks), *GROUPS, "mean of group means", "mean of 19 tasks",
              "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    for row, per_task in sorted(rows.items()):
        top1 = {t: mean(v.values()) for t, v in per_task.items()}
        summary = vtab_summary(top1)
        seeds = sorted({len(v) for v in per_task.values()})
        cells = [row, *(fmt(top1.get(t)) for t in tasks), *(fmt(summary[g]) for g in GROUPS),
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
            if args.method in (None, k.split()[0]) and args.model in (None, k.split()[1])}
    print(markdown_table(rows) if rows else f"no complete VTAB-1k records under {args.results_dir}")


if __name__ == "__main__":
    main()
