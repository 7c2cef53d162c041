"""A fault on one process of a multi-process run: every process stops, and the record says what failed
(docs/multi_gpu.md).

Left alone, a process that raises leaves the others blocked in their next collective. Over gloo they notice the
closed connection and fail with "Connection closed by peer", which global rank 0, the only process that writes
the run record, records instead of the real error; over NCCL they block until the process-group timeout (30 min by
default), or, on one node, until Lightning's process observer SIGKILLs them (5 s after a process exits non-zero),
which leaves a ``running`` record.

:class:`FaultWatch` (a Lightning callback, active when the run has several processes) passes a fault through the
key-value store of the process group's rendezvous (the TCPStore at ``MASTER_ADDR:MASTER_PORT``, reachable from every
node, alive while global rank 0 is):

- the failing process publishes ``process r of W: <error>`` (:meth:`FaultWatch.publish`, from ``on_exception``,
  before Lightning tears anything down; the first fault published is the one every process reports) and, before
  exiting with its own traceback, waits until every other process has seen it (at most :data:`ACK_TIMEOUT_S`);
- every process polls the store every :data:`POLL_S` in a daemon thread; on another process's fault, global rank 0
  writes the run record (``failed``, that error) through ``on_remote_fault``, the process acknowledges and ends with
  status 1 at once (``os._exit``: its main thread may be blocked inside a collective that never completes).

So every process stops within seconds, the launch exits non-zero, and the one record says ``failed`` with the
failing process's own error. A process killed outright (SIGKILL, a lost node) publishes nothing: the others
then stop as the backend lets them (gloo: at once; NCCL: at its timeout).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist

log = logging.getLogger(__name__)

FAULT_KEY, SEEN_KEY = "peftlab/fault", "peftlab/fault_seen"
POLL_S = 0.5  # seconds between two looks at the store
ACK_TIMEOUT_S = 30.0  # the failing process waits at most this long for the others to have seen its fault


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class FaultWatch(pl.Callback):
    """Shares this process's fault with the others and stops this process on theirs (module docstring).
    ``on_remote_fault(error)`` runs once, on global rank 0, before it stops for another process's fault."""

    def __init__(self) -> None:
        self.on_remote_fault: Callable[[str], None] | None = None
        self.rank, self.world = 0, 1
        self._store: Any = None
        self._lock = threading.Lock()  # the store client and on_remote_fault, from two threads
        self._stop = threading.Event()
        self._reported = False  # on_remote_fault ran (or rank 0 recorded its own fault)

    # ---- Lightning hooks ----
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._store is not None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:  # a rendezvous without a TCP store
            return
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), None, False,
                                    timeout=datetime.timedelta(seconds=10), wait_for_workers=False)
        threading.Thread(target=self._watch, name="peftlab-fault-watch", daemon=True).start()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.publish(exception)

    # ---- the failing process ----
    def publish(self, err: BaseException) -> None:
        """Publish this process's fault unless another's came first."""
        with self._lock:
            self._publish(err)

    def _publish(self, err: BaseException) -> str:
        """(Lock held) publish, and return the fault every process reports: the first one published."""
        if self._store is None:
            return describe(err)
        mine = f"process {self.rank} of {self.world}: {describe(err)}"
        try:
            return self._store.compare_set(FAULT_KEY, "", mine).decode()
        except Exception:  # the store is gone (global rank 0 exited): nothing left to tell
            return mine

    def fail(self, err: BaseException, record: Callable[[str], None]) -> None:
        """The run stopped here with ``err``: ``record(error)`` with the first fault published (this one unless
        another process's came first), then let the other processes see it (they stop) before returning."""
        with self._lock:
            self._reported = True
            error = self._publish(err)
            record(error)
        self.wait_until_seen()

    def wait_until_seen(self) -> None:
        """After publishing: let the other processes see the fault (they stop) before this one exits."""
        if self._store is None:
            return
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with self._lock:
                    if self._store.add(SEEN_KEY, 0) >= self.world - 1:
                        return
            except Exception:
                return
            time.sleep(POLL_S / 5)

    def stop(self) -> None:
        """The run is over here (finished or failed): stop watching."""
        self._stop.set()

    # ---- every process ----
    def _watch(self) -> None:
        mine = f"process {self.rank} of {self.world}: "
        while not self._stop.wait(POLL_S):
            try:
                with self._lock:
                    fault = self._store.get(FAULT_KEY).decode() if self._store.check([FAULT_KEY]) else ""
            except Exception:  # the store is gone: global rank 0 has exited (a finished run, or its own fault)
                return
            if fault and not fault.startswith(mine) and not self._stop.is_set():
                self._stop_for(fault)

    def _stop_for(self, fault: str) -> None:
        print(f"[peftlab] process {self.rank} stops: {fault}", file=sys.stderr, flush=True)
        with self._lock:
            if self.rank == 0 and not self._reported and self.on_remote_fault is not None:
                self._reported = True
                try:
                    self.on_remote_fault(fault)
                except Exception as err:  # the record could not be written: still stop
                    print(f"[peftlab] could not record the fault: {describe(err)}", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):  # the store may be gone already
                self._store.add(SEEN_KEY, 1)
        logging.shutdown()
        os._exit(1)
