"""Build the paper tables from run records only: ours (mean ± std (n seeds)) beside the paper's numbers and Δ.

Usage:
    python scripts/make_tables.py                                   # every table in results/runs → results/tables/
    python scripts/make_tables.py --table smt_commonsense_llama7b   # one table
    python scripts/make_tables.py --runs results/mini/runs --mini   # mini runs → results/tables/mini/ (MINI RUN label)

A table groups the complete records whose ``config.table.name`` is that table (``python train.py experiment=<table>``);
rows = ``config.table.row``, columns = tasks (or evaluation sets). Paper numbers come from the CSV named by
``config.table.paper_numbers`` (under --paper-dir), else ``<paper-dir>/<table>.csv`` when it exists.
Running/failed records are ignored and listed; a corrupted or partial record stops the build (exit 2) with the file
and the reason, unless --ignore-refused (then it is listed under the table). See docs/tables.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from peftlab.errors import ConfigError
from peftlab.reproduce import experiment_names, load_table, table_columns
from peftlab.table_render import Header, render_csv, render_markdown
from peftlab.tables import Records, build_table, cell_key, is_mini, load_records, table_of


def _no_table_message(runs: Path, complete: int, incomplete: int) -> str:
    if not complete:
        return f"no complete records under {runs} ({incomplete} incomplete)"
    return (f"the {complete} complete record(s) under {runs} belong to no table (runs made without "
            "experiment=<table>, such as the demo); a table is built from the runs of `python scripts/reproduce.py "
            "<table>` (`--list` names the tables; `--mini` runs the offline mini version), and the mini tables "
            "from their records: python scripts/make_tables.py --runs results/mini/runs --mini")


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` unless ``path`` already holds it but for the "- built:" date and "- command:" lines (another
    command that builds the same table, e.g. without --table); return whether written. Rebuilding a table from
    the same records then leaves the tracked file untouched (a rewrite only to change the date marked every later
    run record ``git.dirty``)."""
    def undated(t: str) -> list[str]:
        return [line for line in t.splitlines() if not line.startswith(("- built: ", "- command: "))]

    if path.is_file() and undated(path.read_text()) == undated(text):
        return False
    path.write_text(text)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="directory of run records")
    parser.add_argument("--table", nargs="*", default=None, help="table name(s); default: every table found")
    parser.add_argument("--out", type=Path, default=None, help="default results/tables (mini: results/tables/mini)")
    parser.add_argument("--paper-dir", type=Path, default=Path("results/paper_numbers"))
    parser.add_argument("--mini", action="store_true", help="label as MINI RUN (automatic for a 'mini' runs dir)")
    parser.add_argument("--ignore-refused", action="store_true", help="build anyway, listing refused records")
    args = parser.parse_args(argv)
    command = "python scripts/make_tables.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        recs = load_records(args.runs)
        if recs.refused and not args.ignore_refused:
            for path, why in recs.refused:
                print(f"[make_tables] refused {path}: {why}", file=sys.stderr)
            print(f"[make_tables] {len(recs.refused)} corrupted/partial record(s): fix or move them, or pass "
                  "--ignore-refused", file=sys.stderr)
            return 2
        mini = is_mini(args.runs, args.mini)
        out = args.out or Path("results/tables") / ("mini" if mini else "")
        found = sorted({cell_key(r)[0] for r in recs.complete} - {""})
        tables = args.table or found
        if not tables:
            print(f"[make_tables] {_no_table_message(args.runs, len(recs.complete), len(recs.incomplete))}",
                  file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        known = experiment_names()
        for table in tables:
            columns = table_columns(table, mini) if table in known else []  # the tasks its averages name
            data, paper = build_table(recs, table, args.paper_dir, mini, columns)
            header = Header(
                command=command, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                record_count=len(data.records), commits=Records(complete=data.records).commits(),
                models=sorted({str(r.get("model")) for r in data.records}),
                tasks=sorted({str(r["task"]) for r in data.records}), mini=mini,
                note=(load_table(table).get("mini") or {}).get("note") if mini and table in known else None,
                incomplete=[str(p) for p in recs.incomplete if table_of(p) in (table, None)],
                refused=[(str(p), w) for p, w in recs.refused])
            changed = [write_if_changed(out / f"{table}.md", render_markdown(data, paper, header)),
                       write_if_changed(out / f"{table}.csv", render_csv(data, paper))]
            print(f"[make_tables] {table}: {len(data.records)} record(s) → {out / table}.md, {out / table}.csv"
                  + ("" if any(changed) else " (unchanged: not rewritten)"))
    except ConfigError as err:
        print(f"[make_tables] error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
