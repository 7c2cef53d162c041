"""Every collective of a run works on the process group a GPU run builds (NCCL), modelled on CPU over gloo.

NCCL reduces tensors in GPU memory only ("No backend type associated with device type cpu"); on a GPU machine SMT
keeps its warm-up sums in CPU memory (``offload_grad_sums: null``). Here a 2-process gloo run of SMT ``grad_only``
with ``offload_grad_sums=true`` (the offloaded branch, on the CPU) carries :class:`NcclLikeCollectives`, which, in
every process,

- marks the method's sums as host memory after every batch (:class:`HostMemory`: the same storage seen as a
  tensor subclass, which every tensor computed from it inherits: clones, averages, scores);
- wraps torch.distributed's tensor collectives to refuse, as NCCL would, a tensor in host memory or on another
  device than the module's.

The run must complete (checkpoints taken during the warm-up included) with the guard having seen collectives and
host-memory sums.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from tests.conftest import ROOT
from tests.integration.test_ddp import COMMON, SMT

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single")


class HostMemory(torch.Tensor):
    """A CPU tensor standing for host memory of a GPU machine (pickled as a plain tensor)."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        return torch.Tensor.__reduce_ex__(self.as_subclass(torch.Tensor), protocol)


def tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    return []


class NcclLikeCollectives(pl.Callback):
    """The guard of the module docstring; writes what it saw to ``<report>/rank<r>.json`` when fit ends."""

    def __init__(self, report: str) -> None:
        self.report, self.device = Path(report), None
        self.seen = {"collectives": 0, "host_sums": 0}
        for name in COLLECTIVES:
            guarded = self.guard(getattr(distributed_c10d, name))
            setattr(distributed_c10d, name, guarded)
            setattr(dist, name, guarded)

    def guard(self, collective: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(collective)
        def refuse_host_memory(*args: Any, **kwargs: Any) -> Any:
            for t in [t for a in [*args, *kwargs.values()] for t in tensors_in(a)]:
                self.seen["collectives"] += 1
                if isinstance(t, HostMemory) or (self.device is not None and t.device != self.device):
                    raise RuntimeError(f"NCCL-like guard: {collective.__name__} on a tensor in host memory or on "
                                       f"{t.device} while the module is on {self.device}")
            return collective(*args, **kwargs)

        return refuse_host_memory

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.device = pl_module.device

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # before the method's step hook (SMT's switch) and checkpoints
        sums = pl_module.method.grad_sums
        for name, tensor in sums.items():
            if not isinstance(tensor, HostMemory):
                sums[name] = tensor.as_subclass(HostMemory)  # the same storage: the method keeps adding into it
        self.seen["host_sums"] = max(self.seen["host_sums"], len(sums))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report.mkdir(parents=True, exist_ok=True)
        (self.report / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def test_smt_offloaded_sums_never_reach_a_collective(tmp_path: Path) -> None:
    report, runs = tmp_path / "report", tmp_path / "runs"
    args = [*COMMON, "method=smt", *SMT, "method.warmup_mode=grad_only", "method.offload_grad_sums=true",
            "callbacks.checkpoint.every_n_train_steps=2", "task.batch_size=8", "trainer.strategy=ddp",
            "trainer.devices=2", f"hydra.run.dir={tmp_path / 'out'}", f"paths.results_dir={runs}",
            f"+callbacks.guard._target_={__name__}.NcclLikeCollectives", f"+callbacks.guard.report={report}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record_file,) = runs.rglob("*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "complete" and record["method_state"]["grad_sums_bytes"] == {"cpu": 6 * 64 * 64 * 4}
    for rank in (0, 1):
        seen = json.loads((report / f"rank{rank}.json").read_text())
        assert seen["collectives"] > 0 and seen["host_sums"] == 6, seen  # q, k, v of 2 layers, in host memory
