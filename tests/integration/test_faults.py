"""A fault on one process of a 2-process run (CPU, gloo): every process stops within a minute, the launch exits
non-zero, and the one record says ``failed`` with the failing process's own error (peftlab.faults).

The fault is a callback (``+callbacks.fault``) that raises on one global rank when the batch after optimizer step 3
starts; every process writes its pid when training starts, so the test can check that none is left running. The
surviving process must be stopped by the fault watch itself (it says so), not by gloo noticing the closed connection,
which NCCL does not do. The fault on rank 1 is the case that recorded gloo's "Connection closed by peer" before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import ROOT
from tests.integration.test_ddp import COMMON

STEP = 3


class FailOnRank(pl.Callback):
    """Raises on global rank ``rank`` at step ``step``; every process writes its pid into ``pids``."""

    def __init__(self, rank: int, step: int, pids: str) -> None:
        self.rank, self.step, self.pids = rank, step, Path(pids)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pids.mkdir(parents=True, exist_ok=True)
        (self.pids / f"rank{trainer.global_rank}").write_text(str(os.getpid()))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected fault on process {self.rank} at step {self.step}")


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan nobody reaps still answers signal 0)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("rank", [pytest.param(0, marks=pytest.mark.slow), 1])
def test_a_fault_on_one_process_stops_all_and_records_its_own_error(tmp_path: Path, rank: int) -> None:
    pids, runs = tmp_path / "pids", tmp_path / "runs"
    args = [*COMMON, "method=lora", "task.batch_size=8", "trainer.strategy=ddp", "trainer.devices=2",
            f"hydra.run.dir={tmp_path / 'out'}", f"paths.results_dir={runs}",
            f"+callbacks.fault._target_={__name__}.FailOnRank", f"+callbacks.fault.rank={rank}",
            f"+callbacks.fault.step={STEP}", f"+callbacks.fault.pids={pids}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode != 0, proc.stderr[-3000:]
    (record_file,) = runs.rglob("*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "failed", record.get("status")
    assert record["error"] == f"process {rank} of 2: RuntimeError: injected fault on process {rank} at step {STEP}"
    # the other process was stopped by the watch, not by gloo's closed connection (NCCL has none)
    assert f"[peftlab] process {1 - rank} stops: process {rank} of 2: RuntimeError" in proc.stderr, proc.stderr[-3000:]

    started = [int((pids / f"rank{r}").read_text()) for r in (0, 1)]
    deadline = time.monotonic() + 60
    while any(map(running, started)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(map(running, started)), f"processes still running a minute after the launch ended: {started}"
