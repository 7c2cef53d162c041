"""Two processes (CPU, gloo, ``train.py trainer.strategy=ddp trainer.devices=2``) give the one-process answer.

For each case, a DDP run (per-process batch B) and an in-process run with batch 2B (the same global batches in
the same order: see peftlab.data) on a tiny model with dropout off, and:

- one record (global rank 0), ``complete``, saying 2 processes;
- its test metrics are those of the final parameters evaluated on the whole set by one process (export the
  run, reload, evaluate: exact equality);
- the final trained tensors (``Method.adapter_state_dict``: what the method trained, e.g. the whole model after
  SMT's full warm-up) are bit-identical on both processes;
- they equal the one-process run's to float tolerance (DDP averages two means of B where one process takes
  one mean of 2B: the sums differ in the last bits); the largest difference is printed (``pytest -s``);
- the method's decisions (SMT's blocks, LISA's layers, SpIEL's indices) equal the one-process run's.

The default suite runs one DDP run per mechanism: SMT with its ``grad_only`` warm-up on a classification task (the
probed weights DDP must leave alone, the switch that re-wraps DDP around new tensors) and LoRA on a generation
task (the loss normalised per batch, the generated answers gathered); LoRA on classification, SMT's ``full``
warm-up, every other registered method and SQuAD's windows are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from peftlab.distributed import digest
from peftlab.export import evaluate, export
from peftlab.methods import METHODS
from tests.conftest import ROOT, compose_config

DROPOUT_OFF = ["+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]
COMMON = ["model=tiny_bert", *DROPOUT_OFF, "logger=none", "callbacks=default", "trainer.enable_progress_bar=false",
          "task.num_train=64", "task.num_validation=37", "task.eval_batch_size=8", "trainer.max_epochs=2",
          "callbacks.checkpoint.every_n_train_steps=4", "optim.warmup_steps=1", "seed=3"]
BATCH = 8  # per process: 64 examples, global batch 16 → 4 steps per epoch, 8 in all (the last is checkpointed)
SMT = ["method.block_size=16", "method.budget_unit=blocks", "method.budget=4", "method.warmup_steps=3",
       "method.lr=1e-3", "method.smt_lr=1e-2"]
METHOD_OVERRIDES = {  # small schedules so that each method's decisions happen inside 8 steps
    "smt": SMT,
    "lisa": ["method.activated_layers=1", "method.interval_steps=3", "method.lr=1e-3"],
    "spiel": ["method.reselection_steps=4", "method.selection_accumulation_steps=1", "method.lr=1e-3"],
    "spt_lora": ["method.sensitivity_batches=2", "method.budget=5000"],
}
COMMONSENSE = ["model=tiny_llama", "model.config.vocab_size=512", "task=commonsense_synthetic", "task.num_train=64",
               "task.val_set_size=16", "task.num_eval=5", "task.eval_batch_size=8", "logger=none",
               "callbacks=default", "trainer.enable_progress_bar=false", "trainer.max_epochs=2",
               "callbacks.checkpoint.every_n_train_steps=3", "optim.warmup_steps=1", "method.lr=1e-2", "seed=3"]
# SQuAD trains on windows (155 here, not a multiple of the global batch 16): stop after 8 full global batches, as a
# partial last batch is padded (docs/multi_gpu.md); the 67 evaluation windows end in a partial batch, kept
SQUAD = [*COMMON, "task=squad_synthetic", "task.num_validation=23", "trainer.max_steps=8"]


class DumpTrained(pl.Callback):
    """Saves, per process, what the method trained and its decisions, at the end of ``fit``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        state = pl_module.method.adapter_state_dict(pl_module.model)
        torch.save({"tensors": state, "method_state": pl_module.method.method_state()},
                   self.path / f"rank{trainer.global_rank}.pt")


def _dump(where: Path) -> list[str]:
    return [f"+callbacks.dump._target_={__name__}.DumpTrained", f"+callbacks.dump.path={where}"]


def _ddp_run(tmp_path: Path, overrides: list[str]) -> tuple[Path, list[dict[str, Any]]]:
    """``train.py`` with two CPU processes; returns (the one record, the dump of each process)."""
    runs, dumps = tmp_path / "ddp_runs", tmp_path / "ddp_dump"
    args = [*overrides, "trainer.strategy=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'ddp_out'}",
            f"paths.results_dir={runs}", *_dump(dumps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the kernels of this process
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = list(runs.rglob("*.json"))
    assert len(records) == 1, f"expected one record (global rank 0), found {records}"
    return records[0], [torch.load(dumps / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _one_process_run(tmp_path: Path, overrides: list[str]) -> dict[str, Any]:
    from omegaconf import open_dict

    from peftlab.train import run

    cfg = compose_config([*overrides, *_dump(tmp_path / "one_dump")])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "one_out")
        cfg.paths.results_dir = str(tmp_path / "one_runs")
    run(cfg)
    return torch.load(tmp_path / "one_dump" / "rank0.pt", weights_only=False)


def by_position(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SpIEL's (indices, values) slots sorted by index: which slot holds an entry is bookkeeping (drop/grow ranks
    |values| that Adam's first steps make nearly equal, so float noise reorders the slots), the update is not."""
    out = dict(tensors)
    for name in [k for k in tensors if k.endswith("spiel_indices")]:
        order = tensors[name].argsort()
        values = f"{name.removesuffix('indices')}values"
        out[name], out[values] = tensors[name][order], tensors[values][order]
    return out


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a − b| over floating tensors; integer/bool tensors (SpIEL's indices, SMT's block coordinates,
    CapaBoost's masks) must be equal."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    differ = [k for k in a if not a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert not differ, f"structural tensors differ: {differ[:5]}"
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()
               and a[k].numel())


def _decisions(method_state: dict[str, Any]) -> dict[str, Any]:
    """The structural choices of a method (the counters that differ with the batch count left out)."""
    keep = ("selection", "active_layers", "plan", "phase")
    return {k: v for k, v in method_state.items() if k in keep}


def check_ddp_equals_one_process(tmp_path: Path, overrides: list[str], accumulate: bool = False,
                                 atol: float = 1e-4, noise_only: tuple[str, ...] = ()) -> float:
    """The assertions of the module docstring; returns the largest |2-process − 1-process| over trained tensors.
    The one-process run takes batch 2B, or with ``accumulate`` batch B and 2 accumulated batches (the exact
    counterpart whatever the loss's normalisation; batch 2B only when the loss is a mean over examples).
    ``noise_only``: name suffixes of tensors whose gradient is zero in exact arithmetic, left out of the
    comparison with one process (Adam turns their float noise into ±lr steps that differ between runs)."""
    record_path, (rank0, rank1) = _ddp_run(tmp_path, [*overrides, f"task.batch_size={BATCH}"])
    record = json.loads(record_path.read_text())
    assert record["status"] == "complete" and record["processes"] == 2

    for name, tensor in rank0["tensors"].items():  # every process holds the same model
        assert torch.equal(tensor, rank1["tensors"][name]), f"{name} differs between the two processes"
    assert digest(rank0["method_state"]) == digest(rank1["method_state"])  # e.g. SpIEL's candidate sums

    export(record_path, tmp_path / "export")
    measured, recorded = evaluate(tmp_path / "export")
    assert recorded and measured == recorded, (measured, recorded)  # metrics = the final weights on the whole set

    one = _one_process_run(tmp_path, [*overrides, *([f"task.batch_size={BATCH}", "trainer.accumulate_grad_batches=2"]
                                                    if accumulate else [f"task.batch_size={2 * BATCH}"])])
    assert _decisions(rank0["method_state"]) == _decisions(one["method_state"])
    compared = [by_position({k: v for k, v in t["tensors"].items() if not k.endswith(noise_only)})
                for t in (rank0, one)]
    diff = max_difference(*compared)
    print(f"\n[ddp] {' '.join(o for o in overrides if o.startswith(('method=', 'task=')))}: "
          f"max |2-process − 1-process| = {diff:.3g}")
    assert diff <= atol, diff
    return diff


@pytest.mark.parametrize("extra", [
    pytest.param(["method=lora", "method.lr=1e-2"], id="lora", marks=pytest.mark.slow),
    pytest.param(["method=smt", *SMT, "method.warmup_mode=full"], id="smt_full", marks=pytest.mark.slow),
    pytest.param(["method=smt", *SMT, "method.warmup_mode=grad_only"], id="smt_grad_only")])
def test_ddp_equals_one_process(tmp_path: Path, extra: list[str]) -> None:
    check_ddp_equals_one_process(tmp_path, [*COMMON, *extra])


def test_ddp_generation_task_equals_one_process(tmp_path: Path) -> None:
    """Commonsense (causal LM, generation): the loss is a mean over each batch's answer tokens, so DDP's average of
    the two processes' means is one process's batch-B run with 2 accumulated batches, not its batch-2B run."""
    check_ddp_equals_one_process(tmp_path, [*COMMONSENSE, "method=lora"], accumulate=True)


@pytest.mark.slow
def test_ddp_squad_windows_equal_one_process(tmp_path: Path) -> None:
    # the span head's bias shifts every position's logit alike: softmax cancels it, its gradient is 0 (but noise)
    check_ddp_equals_one_process(tmp_path, [*SQUAD, "method=lora", "method.lr=1e-2"],
                                 noise_only=("qa_outputs.bias",))


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS.names() if m not in {"lora"}])
def test_ddp_every_method_equals_one_process(tmp_path: Path, method: str) -> None:
    check_ddp_equals_one_process(tmp_path, [*COMMON, f"method={method}", *METHOD_OVERRIDES.get(method, [])])
