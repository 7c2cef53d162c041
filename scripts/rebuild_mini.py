"""Rebuild the mini tables and figures (results/tables/mini, results/figures/mini) from new records of this commit.

    python scripts/rebuild_mini.py                       # every table with a mini version (`make mini`)
    python scripts/rebuild_mini.py --tables smt_budget   # some tables: only their records are replaced
    python scripts/rebuild_mini.py --dry-run             # the commands, nothing run

It refuses to start when tracked files have uncommitted changes: every record names the commit it ran at (a dirty
tree makes it ``<commit>+dirty``), and each table lists its records' commits. Every mini point runs
(``scripts/reproduce.py <table> --mini --no-tables``) into a fresh, untracked directory, so the tree stays clean
while the runs go on; then the records of the rebuilt tables in results/mini/runs are replaced by the new ones and
their tables and figures are rebuilt (``scripts/make_tables.py``; ``scripts/plot_budget.py`` for the budget tables
and any table that has a figure already, e.g. sparse_peers). A failed run stops
it before anything under results/ changes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from peftlab import reproduce as rp
from peftlab.results import git_commit

NEW = Path("results/mini/runs.building")  # untracked while the runs go on ("mini" in the path: mini tables)
FIGURES = Path("results/figures/mini")


def mini_tables() -> list[str]:
    """The experiment files with a ``table.mini`` block."""
    return [t for t in rp.experiment_names() if rp.load_table(t).get("mini")]


def table_name(record: Path) -> str | None:
    return ((json.loads(record.read_text()).get("config") or {}).get("table") or {}).get("name")


def run(cmd: list[str], dry_run: bool) -> None:
    print("$", rp.shell(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, cwd=rp.ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = mini_tables()
    ap.add_argument("--tables", nargs="+", choices=known, default=known, metavar="TABLE",
                    help=f"tables to rebuild (default: all of {known})")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    if git_commit(rp.ROOT)["dirty"] and not args.dry_run:
        print("[rebuild_mini] tracked files have uncommitted changes: commit them first, so that every record names "
              "a clean commit", file=sys.stderr)
        return 2
    new, runs = rp.ROOT / NEW, rp.ROOT / rp.MINI_RUNS_DIR
    if not args.dry_run:
        shutil.rmtree(new, ignore_errors=True)  # what an interrupted rebuild left
    py = sys.executable
    for table in args.tables:
        run([py, "scripts/reproduce.py", table, "--mini", "--no-tables", "--runs-dir", str(NEW)], args.dry_run)
    print(f"[rebuild_mini] replace the records of {args.tables} under {rp.MINI_RUNS_DIR} with those of {NEW}")
    if not args.dry_run:
        for old in runs.rglob("*.json"):
            if table_name(old) in args.tables:
                old.unlink()
        for record in new.rglob("*.json"):
            target = runs / record.relative_to(new)
            target.parent.mkdir(parents=True, exist_ok=True)
            record.replace(target)
        shutil.rmtree(new)
    for table in args.tables:
        run([py, "scripts/make_tables.py", "--runs", rp.MINI_RUNS_DIR, "--mini", "--table", table], args.dry_run)
        if rp.is_budget_table(table) or (rp.ROOT / FIGURES / f"{table}_budget.png").is_file():  # e.g. sparse_peers
            run([py, "scripts/plot_budget.py", "--runs", rp.MINI_RUNS_DIR, "--mini", "--table", table], args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
