"""Every registered method on the offline demo, with its defaults: ``python train.py method=<name>`` (MiniLM, the
synthetic pair task, 6 epochs on CPU), one table of test accuracy, trainable parameters and the CPU time of the run.

Usage:
    python scripts/bench_demo.py                          # every method, → results/bench/demo_methods_cpu.{json,md}
    python scripts/bench_demo.py --methods lora smt       # some methods (a table of those only)
    python scripts/bench_demo.py --jobs 2                 # two runs at a time (one per core of a 2-core machine)
    python scripts/bench_demo.py --out /tmp/bench -- trainer.max_epochs=1   # overrides after -- go to every run

Each run is a child ``train.py`` process writing its record and outputs under a temporary directory (nothing lands
in results/runs or outputs/). CPU time is the user + system time of the child and its threads
(``os.wait4``: each run's own, also with ``--jobs 2`` runs side by side), which other jobs on the machine distort
less than wall time (also given). A method whose run fails gets a row saying so, and the script exits 1 after
writing the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from peftlab import results
from peftlab.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "lora"  # the demo's default method: every other row is compared with it


def run_method(method: str, work: Path, extra: list[str]) -> dict[str, Any]:
    """``train.py method=<method>`` in a child process; its record's numbers and the child's own CPU seconds
    (``os.wait4``: that child and what it waited for, whatever else runs beside it)."""
    args = [f"method={method}", f"paths.results_dir={work / 'runs'}", f"hydra.run.dir={work / 'out'}", *extra]
    start = time.time()
    with open(work / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    wall = time.time() - start
    row: dict[str, Any] = {"method": method, "command": shlex.join(["python", "train.py", *args[:1], *extra]),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "wall_s": round(wall, 1),
                           "status": proc.returncode}
    records = list((work / "runs").rglob("*.json"))
    if proc.returncode or len(records) != 1:
        row["error"] = error_line(stderr)
        return row
    record = json.loads(records[0].read_text())
    main = record["main_metric"]
    row.update(metric=main, test=record["metrics"][f"test/{main}"], trainable=record["params"]["trainable"],
               total=record["params"]["total"], steps=record["global_steps"])
    return row


def error_line(stderr: str) -> str:
    """The failed run's own last line: the exception, not the hint Hydra prints after a traceback."""
    hint = "Set the environment variable HYDRA_FULL_ERROR"
    lines = [x for x in stderr.splitlines() if x.strip() and not x.startswith(hint)]
    return (lines or ["no output"])[-1]


def table(rows: list[dict[str, Any]]) -> str:
    ref = next((r["test"] for r in rows if r["method"] == REFERENCE and "test" in r), None)
    lines = ["| method | test accuracy | Δ vs LoRA | trainable params | % of model | CPU s | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "test" not in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | {r['cpu_s']} | {r['wall_s']} |")
            continue
        delta = f"{r['test'] - ref:+.2f}" if ref is not None else "–"
        lines.append(f"| {r['method']} | {r['test']:.2f} | {delta} | {r['trainable']:,} | "
                     f"{100 * r['trainable'] / r['total']:.3f} | {r['cpu_s']} | {r['wall_s']} |")
    return "\n".join(lines)


def header(record: dict[str, Any], methods: list[str], extra: list[str], jobs: int) -> str:
    """The table's title and provenance: which methods, with which overrides, at which commit, on what CPU."""
    which = "Every method" if sorted(methods) == sorted(METHODS.names()) else "Methods"
    settings = f"with {shlex.join(extra)}" if extra else "with its defaults"
    git = record["git"]
    return (f"# {which} on the demo, {settings} (cpu)\n\n"
            f"Produced by `{record['command']}` on {record['hardware'].get('processor')} "
            f"({record['hardware'].get('cpu_count')} CPUs; {record['created']}, commit {git['commit']}"
            f"{'+dirty' if git.get('dirty') else ''}).\n"
            f"Each row: `{' '.join(['python train.py method=<method>', *map(shlex.quote, extra)])}` "
            "(MiniLM, synthetic pairs: "
            "1,000 training examples, 6 epochs, test on 300; chance 50%). CPU s: user + system seconds of the run's "
            "process (its threads included); wall s depends on what else ran on the machine "
            f"({jobs} run(s) at a time).\n\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=METHODS.names(), choices=METHODS.names(), metavar="NAME",
                    help="methods to run (default: every registered one)")
    ap.add_argument("--jobs", type=int, default=1, help="train.py runs at a time (default 1; CPU s is per run)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"), help="directory of the table")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    methods = sorted(args.methods, key=lambda m: (m != REFERENCE, m))  # LoRA first: the reference row
    git = results.git_commit()  # the code the runs use (checked out before they start)

    def one(method: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=f"bench_demo_{method}_") as work:
            r = run_method(method, Path(work), extra)
        print(f"[bench_demo] {method}: " + (f"test {r['metric']} {r['test']:.2f}, {r['trainable']:,} trainable, "
              if "test" in r else f"FAILED ({r['error']}), ") + f"{r['cpu_s']} CPU s", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:  # each worker waits on one train.py child at a time
        rows = list(pool.map(one, methods))
    command = shlex.join(["python", "scripts/bench_demo.py", *argv])
    record = {"created": results.now(), "git": git, "hardware": results.hardware(),
              "versions": results.versions(), "command": command, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(out / "demo_methods_cpu.json", record)
    md = table(rows)
    (out / "demo_methods_cpu.md").write_text(header(record, args.methods, extra, args.jobs) + f"{md}\n")
    print(md)
    return 1 if any("test" not in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
