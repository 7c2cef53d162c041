"""Reproduce one paper table: its Hydra multirun over methods × tasks × seeds (× budgets), then the table.

    python scripts/reproduce.py --list                                # the tables (conf/experiment/*.yaml)
    python scripts/reproduce.py capaboost_glue --dry-run              # print the train.py -m commands
    python scripts/reproduce.py capaboost_glue                        # run locally, one multirun per cell group
    python scripts/reproduce.py smt_commonsense --launcher submitit_slurm   # as SLURM array jobs (submitit)
    python scripts/reproduce.py smt_budget --mini                     # offline mini version → results/*/mini/
    python scripts/reproduce.py capaboost_squad --seeds 42 --methods lora -- trainer.devices=2
    python scripts/reproduce.py capaboost_glue --methods capaboost_lora --tasks rte --seeds 42   # one cell
    python scripts/reproduce.py smt_commonsense --plan                # per cell: GPUs, peak per phase, steps
    python scripts/reproduce.py smt_commonsense --gpu-mem 80          # refuse before launching if a cell won't fit

Runs whose COMPLETE record already exists (same table, row, task, seed) are skipped, so a killed
reproduction resumes by running the same command. Afterwards scripts/make_tables.py rebuilds the table and,
for budget tables, scripts/plot_budget.py the figure. Plan format: src/peftlab/reproduce.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from peftlab import reproduce as rp
from peftlab.errors import EXIT_FAILED, ConfigError
from peftlab.memory.cells import refusal
from peftlab.memory.report import GPUS
from peftlab.sweep import collect, summary


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", nargs="?", help="experiment file name under conf/experiment/")
    ap.add_argument("--list", action="store_true", help="list the tables and exit")
    ap.add_argument("--mini", action="store_true", help="offline mini version (table.mini) into results/mini/runs")
    ap.add_argument("--seeds", type=int, nargs="+", help="replace the table's seeds")
    ap.add_argument("--methods", nargs="+", help="only these method entries of the table")
    ap.add_argument("--tasks", nargs="+", help="only these task entries of the table (one cell: with --methods)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--launcher", help="Hydra launcher, e.g. submitit_slurm (conf/hydra/launcher/)")
    ap.add_argument("--runs-dir", help="records directory (default results/runs, --mini: results/mini/runs)")
    ap.add_argument("--no-tables", action="store_true", help="do not rebuild the table/figure afterwards")
    ap.add_argument("--plan", action="store_true", help="print each cell's GPUs, predicted peak per GPU for each "
                    "phase (docs/memory.md), the GPU sizes that hold it and its optimizer steps; run nothing")
    ap.add_argument("--gpu-mem", type=float, metavar="GIB", help="refuse, before launching anything, a table with a "
                    "cell that needs more than GIB GiB per GPU (predicted peak with the margin)")
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra  # after --: Hydra overrides added to (and winning in) every run
    return args


def rebuild(table: str, runs_dir: str, mini: bool) -> None:
    """make_tables (and plot_budget for budget tables) over the records of ``runs_dir``."""
    flags = ["--runs", runs_dir, "--table", table, *(["--mini"] if mini else [])]
    scripts = [Path("scripts/make_tables.py")]
    if rp.is_budget_table(table):
        scripts.append(Path("scripts/plot_budget.py"))
    for script in scripts:
        if not (rp.ROOT / script).exists():
            print(f"[reproduce] {script} not found: skipped", file=sys.stderr)
            continue
        cmd = [sys.executable, str(script), *flags]
        print("[reproduce] $", rp.shell(cmd), flush=True)
        subprocess.run(cmd, cwd=rp.ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.list or not args.table:
        print("\n".join(rp.experiment_names()))
        return 0
    try:
        plan = rp.plan(args.table, args.mini, args.seeds, args.methods, args.tasks)
    except ConfigError as err:
        print(f"ConfigError: {err}", file=sys.stderr)
        return 2
    if args.plan or args.gpu_mem is not None:
        cells = rp.memory_plan(plan, extra=args.extra)
        if args.plan:
            print("\n".join(c.describe() for c in cells))
        # --plan alone: a cell that fits none of the GPU sizes (or fails before training) is refused as well
        line = refusal(cells, args.gpu_mem if args.gpu_mem is not None else max(GPUS), args.table)
        if line is not None:
            print(f"ConfigError: {line}", file=sys.stderr)
            return 2
        if args.plan:
            return 0
    try:
        plan = rp.resolve_keys(plan)
    except ConfigError as err:
        print(f"ConfigError: {err}", file=sys.stderr)
        return 2
    runs_dir = args.runs_dir or (rp.MINI_RUNS_DIR if args.mini else rp.RUNS_DIR)
    for m in plan.skipped_methods:
        print(f"[reproduce] method entry '{m}' skipped: its conf/method/ file does not exist yet")
    todo = rp.pending(plan, rp.done_keys(rp.ROOT / runs_dir))
    print(f"[reproduce] {args.table}{' (mini)' if args.mini else ''}: {len(plan.points)} runs planned, "
          f"{len(plan.points) - len(todo)} already complete in {runs_dir}, {len(todo)} to run")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    root = f"multirun/{args.table}{'-mini' if args.mini else ''}/{stamp}"
    cmds = rp.commands(todo, args.table, launcher=args.launcher, sweep_root=root,
                       extra=[f"paths.results_dir={runs_dir}", *args.extra])
    for cmd in cmds:
        print("$", rp.shell(cmd), flush=True)
    if args.dry_run:
        return 0
    if args.launcher:  # each call waits on its cluster jobs: submit all groups at once
        procs = [subprocess.Popen(c, cwd=rp.ROOT) for c in cmds]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.run(c, cwd=rp.ROOT).returncode for c in cmds]
    failed = report_failures(args.table, cmds, codes)
    if not args.no_tables:
        if rp.pending(plan, rp.done_keys(rp.ROOT / runs_dir)) == plan.points:
            print(f"[reproduce] no complete run of table '{args.table}' in {runs_dir}: table not written",
                  file=sys.stderr)
        else:
            rebuild(args.table, runs_dir, args.mini)
    return EXIT_FAILED if failed else 0


def report_failures(table: str, cmds: list[list[str]], codes: list[int]) -> bool:
    """Print which runs of the multiruns ``cmds`` failed and why (their job outcomes, peftlab/sweep.py), and each
    multirun that failed before any job ran; True when anything failed."""
    outcomes = {}
    for cmd in cmds:
        sweep_dir = next(a.split("=", 1)[1] for a in reversed(cmd) if a.startswith("hydra.sweep.dir="))
        outcomes[rp.shell(cmd)] = collect(rp.ROOT / sweep_dir)
    lines = summary([o for found in outcomes.values() for o in found], f"[reproduce] {table}") if cmds else []
    for cmd, code in zip(cmds, codes, strict=True):
        if code and not outcomes[rp.shell(cmd)]:
            lines.append(f"  FAILED multirun (status {code}, no job ran): {rp.shell(cmd)}")
    failed = len(lines) > 1
    if lines:
        print("\n".join(lines), file=sys.stderr if failed else sys.stdout, flush=True)
    if failed:
        print("[reproduce] failed runs stay missing: fix the cause and rerun the same command (complete runs are "
              "skipped)", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
