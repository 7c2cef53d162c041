"""Kill-and-resume: a run cut mid-run (after a checkpoint exists), resumed, must end exactly where an uninterrupted
run with the same seed ends: same test metrics and bit-identical final trainable tensors, buffers (CapaBoost masks)
and optimizer-visible state. One case SIGKILLs a ``train.py`` subprocess (the death no ``finally`` sees); the
others, which test what each method restores, cut the run in this process with an exception (cheaper). The cut
comes from a callback injected through the config, so its step is exact and the test is not timing-bound.

Every case: 64 training examples, batch 16 → 4 steps per epoch, 3 epochs = 12 steps, ``last.ckpt`` every 3
steps (and at the end of training), dropout on (tiny BERT: 0.1). Also: Ctrl-C leaves an ``interrupted`` record
and prints the command that resumes the run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from peftlab.checkpoint import load_checkpoint
from peftlab.train import run
from tests.conftest import ROOT, TINY, compose_config
from tests.integration.cli import run_cli

STEPS = 12
COMMON = [*TINY, "trainer.max_epochs=3", "task.num_train=64", "task.batch_size=16", "callbacks=default",
          "callbacks.checkpoint.every_n_train_steps=3", "optim.warmup_steps=2"]
SMT = ["method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=4", "method.warmup_steps=6",
       "method.lr=1e-3", "method.smt_lr=1e-2"]


class KillAtStep(pl.Callback):
    """SIGKILLs its own process when the batch after optimizer step ``step`` starts (the checkpoint of any step
    ≤ ``step`` is on disk by then): the kind of death no ``finally`` or Lightning hook sees."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class InterruptAtStep(pl.Callback):
    """Ctrl-C: sends SIGINT to its own process when the batch after optimizer step ``step`` starts, unless the
    run was resumed from a checkpoint (so the resumed run goes through)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGINT)


class FailAtStep(pl.Callback):
    """Raises when the batch after optimizer step ``step`` starts: an in-process stand-in for a kill (cheaper
    than a subprocess)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"interrupted at step {self.step}")


def _train_py(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same kernels as this process
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)


def _killed_run(overrides: list[str], run_dir: Path, results_dir: Path, kill_at: int) -> None:
    args = [*overrides, f"hydra.run.dir={run_dir}", f"paths.results_dir={results_dir}",
            f"+callbacks.kill._target_={__name__}.KillAtStep", f"+callbacks.kill.step={kill_at}"]
    proc = _train_py(args)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file(), "the killed run left no checkpoint"


def _in_process(overrides: list[str], out_dir: Path, results_dir: Path) -> dict[str, float]:
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.results_dir = str(results_dir)
    return run(cfg)


def _final_state(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    ckpt = load_checkpoint(out_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STEPS
    return ckpt["state_dict"], ckpt


def _failed_run(overrides: list[str], run_dir: Path, results_dir: Path, fail_at: int) -> None:
    """The in-process stand-in for a kill (no interpreter start-up): the run raises at step ``fail_at``."""
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.results_dir = str(results_dir)
        cfg.callbacks.fail = {"_target_": f"{__name__}.FailAtStep", "step": fail_at}
    with pytest.raises(RuntimeError, match=f"interrupted at step {fail_at}"):
        run(cfg)


def _assert_resume_equals_uninterrupted(tmp_path: Path, overrides: list[str], kill_at: int,
                                        resume_with: str = "auto", whole: tuple[dict, Path] | None = None,
                                        kill: bool = False) -> dict[str, Any]:
    """Cut the run at ``kill_at`` (``kill``: SIGKILL a ``train.py`` child; else an exception in this process),
    resume it, compare with the uninterrupted run (``whole``: its metrics and output dir, when already run)."""
    overrides = [*COMMON, *overrides]
    if whole is None:
        whole = _in_process(overrides, tmp_path / "whole", tmp_path / "runs_whole"), tmp_path / "whole"

    run_dir = tmp_path / "killed"
    (_killed_run if kill else _failed_run)(overrides, run_dir, tmp_path / "runs", kill_at)
    killed_step = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < killed_step < STEPS
    resumed = _in_process([*overrides, *(["ckpt_path=last"] if resume_with == "last" else [])], run_dir,
                          tmp_path / "runs")

    assert resumed == whole[0]
    a, ckpt_whole = _final_state(whole[1])
    b, ckpt_resumed = _final_state(run_dir)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume (killed at step {kill_at})"
    assert ckpt_whole["peftlab"]["method_state"] == ckpt_resumed["peftlab"]["method_state"]

    (record_file,) = (tmp_path / "runs").rglob("*.json")  # the killed run's, completed by the resumed run
    record = json.loads(record_file.read_text())
    assert record["status"] == "complete" and record["resumed_from"] and record["global_steps"] == STEPS
    return ckpt_resumed


def test_lora_mid_epoch_kill_resumes_exactly(tmp_path: Path) -> None:
    """SIGKILLed (the one real kill: no ``finally`` or Lightning hook runs) in epoch 2 at step 7, resumed from step
    6 (mid-epoch) by rerunning into the same run dir; its ``running`` record is completed."""
    _assert_resume_equals_uninterrupted(tmp_path, ["method=lora", "method.lr=5e-3"], kill_at=7, kill=True)


@pytest.fixture(scope="module")
def smt_whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], Path]:
    """The uninterrupted SMT run the SMT resume tests compare with (run once): its metrics and output dir."""
    where = tmp_path_factory.mktemp("smt_whole")
    return _in_process([*COMMON, *SMT], where / "out", where / "runs"), where / "out"


def test_smt_killed_during_warmup_resumes_exactly(tmp_path: Path, smt_whole: tuple[dict, Path]) -> None:
    """Checkpoint at step 3 of a 6-step warm-up: the gradient sums come back, the same blocks are selected."""
    ckpt = _assert_resume_equals_uninterrupted(tmp_path, SMT, kill_at=5, resume_with="last", whole=smt_whole)
    assert ckpt["peftlab"]["method_state"]["phase"] == "blocks"


def test_smt_killed_after_switch_resumes_exactly(tmp_path: Path, smt_whole: tuple[dict, Path]) -> None:
    """Checkpoint at step 9, three steps into block training: blocks rebuilt before the optimizer state loads."""
    _assert_resume_equals_uninterrupted(tmp_path, SMT, kill_at=10, whole=smt_whole)


@pytest.mark.slow
def test_smt_checkpoint_at_the_switch_step_resumes_exactly(tmp_path: Path, smt_whole: tuple[dict, Path]) -> None:
    """The checkpoint of step 6 (= warmup_steps) already holds the switch (the method hook runs before
    ModelCheckpoint), so the resumed run trains blocks from step 7, as the uninterrupted run."""
    _assert_resume_equals_uninterrupted(tmp_path, SMT, kill_at=8, whole=smt_whole)


@pytest.mark.slow
def test_capaboost_resumes_exactly_with_its_masks(tmp_path: Path) -> None:
    ckpt = _assert_resume_equals_uninterrupted(tmp_path, ["method=capaboost_lora", "method.r=4"], kill_at=7)
    masks = [k for k in ckpt["state_dict"] if k.endswith(".mask")]
    assert masks, "CapaBoost masks are not in the checkpoint"


def test_resuming_with_other_settings_fails_clearly(tmp_path: Path) -> None:
    from peftlab.errors import ConfigError

    overrides = [*COMMON, "method=lora", "trainer.max_epochs=1", "callbacks.checkpoint.every_n_train_steps=2"]
    _in_process(overrides, tmp_path / "out", tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"other settings: method: .*'r': 8.*'r': 4"):
        _in_process([*overrides, "method.r=4"], tmp_path / "out", tmp_path / "runs")


EVERY_METHOD = {  # method → overrides that fit it to tiny BERT and 12 steps
    "full": [], "bitfit": [], "ia3": [], "dora": [], "adapter_houlsby": [], "adapter_pfeiffer": [],
    "capaboost_adapter": [], "adalora": ["method.tinit=2", "method.tfinal=2", "method.delta_t=2"],
    "lisa": [], "s2ft": [], "shira": [], "spiel": [], "spt_lora": ["method.budget=5000"], "ssf": [],
    "supertuning": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(EVERY_METHOD))
def test_every_method_resumes_exactly_in_process(tmp_path: Path, method: str) -> None:
    overrides = [*COMMON, f"method={method}", *EVERY_METHOD[method]]
    whole = _in_process(overrides, tmp_path / "whole", tmp_path / "runs_whole")
    _failed_run(overrides, tmp_path / "cut", tmp_path / "runs", 7)
    assert _in_process(overrides, tmp_path / "cut", tmp_path / "runs") == whole
    a, _ = _final_state(tmp_path / "whole")
    b, _ = _final_state(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_corrupted_checkpoint_in_the_run_dir_fails_before_training(tmp_path: Path) -> None:
    from peftlab.errors import ConfigError

    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "last.ckpt").write_bytes(b"truncated by a kill")
    with pytest.raises(ConfigError, match="last.ckpt is not a readable checkpoint"):
        _in_process([*COMMON, "method=lora"], tmp_path / "out", tmp_path / "runs")


@pytest.fixture
def sigint_raises_keyboard_interrupt() -> Iterator[None]:
    """Python's own SIGINT handler for the test, whatever the suite was started with (``make test &`` in a
    script starts it with SIGINT ignored); the previous handler comes back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_records_interrupted_and_prints_the_command_that_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        sigint_raises_keyboard_interrupt: None) -> None:
    """A real SIGINT at step 7 of ``train.py`` (its Hydra entry point, in this process): exit status 130, record
    ``interrupted`` (not ``failed``), and the printed command (same overrides + ``hydra.run.dir``) continues the run
    from its step-6 checkpoint to a complete record. Lightning sets SIGINT to ignored when it catches the
    KeyboardInterrupt: the run puts the handler back (peftlab.global_state), so the caller can still be stopped
    with Ctrl-C and its child processes are not started with SIGINT ignored."""
    overrides = [*COMMON, "method=lora", f"paths.results_dir={tmp_path / 'runs'}",
                 f"+callbacks.stop._target_={__name__}.InterruptAtStep", "+callbacks.stop.step=7"]
    run_dir = tmp_path / "run"
    monkeypatch.chdir(ROOT)  # the printed command is relative to the working directory
    code = run_cli([*overrides, f"hydra.run.dir={run_dir}"], monkeypatch)
    out, err = capsys.readouterr()
    assert code == 130, err[-3000:]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    (record_file,) = (tmp_path / "runs").rglob("*.json")
    record = json.loads(record_file.read_text())
    command = f"{shlex.join(['python', 'train.py', *overrides])} {shlex.quote(f'hydra.run.dir={run_dir}')}"
    assert record["status"] == "interrupted" and "error" not in record and record["resume_command"] == command
    assert f"resume with:\n  {command}\n" in out, out[-3000:]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6

    assert run_cli(shlex.split(command)[2:], monkeypatch) == 0, capsys.readouterr().err[-3000:]
    record = json.loads(record_file.read_text())
    assert record["status"] == "complete" and record["global_steps"] == STEPS and record["resumed_from"]
