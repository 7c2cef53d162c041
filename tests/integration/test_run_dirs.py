"""Two ``train.py`` runs started at the same moment get their own run directories (the default
``hydra.run.dir`` ends with microseconds and the process id), and each run directory's ``train.log`` holds that
run's log. Before, both got ``outputs/.../seed0_<second>``: the second crashed in the CSV logger, the first's
``record_path`` pointed at the second's failed record, and they shared ``last.ckpt``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, TINY

# Both processes import everything first, say "ready", then wait for the test's "go" file naming one instant,
# so the run directory of each is resolved at that instant (within a few ms of each other).
STARTER = """
import runpy, sys, time
from pathlib import Path
import peftlab.train  # the heavy imports, before the common start
Path(sys.argv[1] + ".ready").touch()
while not Path("go").is_file():
    time.sleep(0.01)
time.sleep(max(0.0, float(Path("go").read_text()) - time.time()))
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
OVERRIDES = [*(o for o in TINY if not o.startswith(("logger=", "callbacks="))), "task.num_train=16",
             "task.num_validation=16", "paths.results_dir=runs"]  # default CSV logger and checkpoint callback


def _start_together(tmp_path: Path, names: list[str]) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, name, str(ROOT / "train.py"), *OVERRIDES],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) for name in names]
    deadline = time.time() + 600
    while not all((tmp_path / f"{n}.ready").is_file() for n in names):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a run died before starting"
        time.sleep(0.05)
    (tmp_path / "go").write_text(str(math.floor(time.time()) + 1.05))  # early in the next second: same second
    return procs


def test_two_runs_started_in_the_same_second_get_their_own_run_dirs(tmp_path: Path) -> None:
    procs = _start_together(tmp_path, ["a", "b"])
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    run_dirs = sorted((tmp_path / "outputs" / "synthetic_pairs" / "lora" / "tiny_bert").iterdir())
    assert len(run_dirs) == 2, run_dirs
    records = set()
    for run_dir in run_dirs:
        record_path = tmp_path / (run_dir / "record_path").read_text()
        record = json.loads(record_path.read_text())
        assert record["status"] == "complete" and Path(record["output_dir"]) == run_dir
        records.add(record_path)
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "csv" / "metrics.csv").is_file()
        log = (run_dir / "train.log").read_text()
        for line in ("[peftlab] method=lora model=tiny_bert", "`Trainer.fit` stopped", "[peftlab] test/accuracy"):
            assert line in log, log
    assert len(records) == 2
