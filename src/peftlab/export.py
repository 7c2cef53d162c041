"""Adapter export and re-evaluation: the logic behind ``scripts/export.py`` and ``scripts/evaluate.py``.

An export directory holds only what a method trained, written by the method's ``save_adapter`` hook:

- peft methods (lora, dora, adalora, ia3): peft's own adapter dir (``adapter_config.json`` +
  ``adapter_model.safetensors``, the task head included through ``modules_to_save``);
- SMT: the selected blocks Δ (k, b, b) per matrix with their block coordinates (``*.smt_rows/cols``), the
  head, and the selection itself in ``export.json`` (``method_state``); with ``warmup_mode=full`` also every
  weight the full-FT warm-up changed (the official code keeps those updates), i.e. the whole model;
- CapaBoost: the shared low-rank weights and the masks themselves (stored, not regenerated: a reload then
  reproduces outputs whatever the mask generator does), plus ``mask_seed``/``d``/``density`` in ``method_state``;
- BitFit, Houlsby/Pfeiffer adapters, full FT: the trainable tensors (full FT: the whole model);

plus ``config.yaml`` (the resolved run config) and ``export.json`` (method state, the recorded test metrics,
file sizes, where it came from). The directory is written under a temporary name and renamed at the end,
so a crash never leaves a half-written export. The checkpoint is read with ``weights_only=True``
(:func:`peftlab.checkpoint.load_checkpoint`: a file carrying a pickled object is refused) and must be from the
step the run record ended at (``global_steps``): an older ``last.ckpt`` would not reproduce the recorded metrics.

:func:`evaluate` rebuilds the base model exactly as the run built it (same seed: a random-init test model
is reproduced too), applies the method, loads the adapter and runs the task's test split.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from peftlab import global_state, results
from peftlab.checkpoint import load_checkpoint
from peftlab.config_utils import require
from peftlab.data import TaskDataModule
from peftlab.module import PeftModule

CHECKPOINT = Path("checkpoints") / "last.ckpt"  # where conf/callbacks/default.yaml saves, under output_dir
ADAPTER_DIR = "adapter"
META_FILE = "export.json"
CONFIG_FILE = "config.yaml"


@dataclass
class RunSource:
    """A finished run: its resolved config, its checkpoint, and its record when one is found."""

    config: DictConfig
    checkpoint: Path
    record: dict[str, Any] | None
    record_path: Path | None


def locate(source: str | os.PathLike[str]) -> RunSource:
    """A run from its record (``.json``), its output dir, or its checkpoint (``.ckpt``)."""
    path = Path(source)
    require(path.exists(), f"'{path}' does not exist: pass a run record (.json), a run output dir or a .ckpt file")
    if path.suffix == ".json":
        record = json.loads(path.read_text())
        require(record.get("status") == "complete", f"run record {path} has status '{record.get('status')}', "
                "not 'complete': only finished runs can be exported")
        out_dir = results.from_repo(record["output_dir"])
        return RunSource(OmegaConf.create(record["config"]), out_dir / CHECKPOINT, record, path)
    out_dir = path.parent.parent if path.is_file() else path
    checkpoint = path if path.is_file() else out_dir / CHECKPOINT
    hydra_cfg = out_dir / ".hydra" / "config.yaml"
    require(hydra_cfg.is_file(), f"no run config at {hydra_cfg}; pass the run's record (.json) instead")
    cfg = OmegaConf.load(hydra_cfg)
    cfg.paths.output_dir = str(out_dir)  # was ${hydra:runtime.output_dir}
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    record_path = find_record(Path(cfg.paths.results_dir), out_dir)
    record = json.loads(record_path.read_text()) if record_path else None
    return RunSource(cfg, checkpoint, record, record_path)


def find_record(results_dir: Path, out_dir: Path) -> Path | None:
    """The complete record under ``results_dir`` whose ``output_dir`` is ``out_dir`` (newest), if any."""
    found: list[Path] = []
    for p in results_dir.rglob("*.json") if results_dir.is_dir() else []:
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        ran_in = results.from_repo(rec.get("output_dir", ""))
        if rec.get("status") == "complete" and ran_in.resolve() == out_dir.resolve():
            found.append(p)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def read_checkpoint(source: RunSource) -> dict[str, Any]:
    """The run's checkpoint (safely loaded), refused when it is not from the step its record ended at."""
    ckpt = load_checkpoint(source.checkpoint)
    steps = (source.record or {}).get("global_steps")
    require(steps is None or ckpt.get("global_step") == steps,
            f"checkpoint {source.checkpoint} is from step {ckpt.get('global_step')}, but run record "
            f"{source.record_path} ended at step {steps}, so exporting it would not reproduce the recorded metrics; "
            "rerun the run (last.ckpt is now also saved at the final step) and export its new record")
    return ckpt


def trained_model(source: RunSource) -> tuple[nn.Module, Any, Any, Any]:
    """The run's model with its checkpoint loaded (as Lightning restores it: method state, then tensors)."""
    from peftlab.train import build_model

    ckpt = read_checkpoint(source)  # before building: a stale or unsafe checkpoint fails at once
    model, method, task, _, preprocessor = build_model(source.config)
    model = method.load_method_state(model, ckpt.get("peftlab", {}).get("method_state", {}))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    result = model.load_state_dict(state, strict=False)
    require(not result.unexpected_keys, f"checkpoint {source.checkpoint} holds tensors this config does not "
            f"build: {result.unexpected_keys[:3]} (was it made with another method/model?)")
    return model, method, task, preprocessor


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer of ``model`` (what saving the whole model would take)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def file_sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def export(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the adapter of run ``source`` to the new directory ``dest``; return its ``export.json``."""
    run = locate(source)
    dest = Path(dest)
    require(not dest.exists(), f"export destination {dest} already exists; choose a new directory")
    model, method, _, _ = trained_model(run)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"  # mkdir, not mkdtemp (0700): the umask's mode
    tmp.mkdir()
    try:
        (tmp / ADAPTER_DIR).mkdir()
        method.save_adapter(model, tmp / ADAPTER_DIR)
        OmegaConf.save(run.config, tmp / CONFIG_FILE, resolve=True)
        adapter_files = file_sizes(tmp / ADAPTER_DIR)
        meta = {
            "method": method.name,
            "model": run.config.model.name,
            "task": run.config.task.name,
            "seed": run.config.seed,
            "method_state": method.method_state(),
            "recorded_metrics": _test_metrics((run.record or {}).get("metrics", {})),
            "source": {"record": results.repo_relative(run.record_path) if run.record_path else None,
                       "checkpoint": results.repo_relative(run.checkpoint)},
            "sizes": {"adapter_files": adapter_files, "adapter_bytes": sum(adapter_files.values()),
                      "full_model_bytes": tensor_bytes(model),
                      "checkpoint_bytes": run.checkpoint.stat().st_size},
            "exported": results.now(),
            "git": results.git_commit(),
            "versions": results.versions(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))  # strict: method_state must be plain JSON
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _test_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith("test/")}


def load_export(directory: str | os.PathLike[str]) -> tuple[DictConfig, dict[str, Any]]:
    """(config, export.json) of an export directory."""
    directory = Path(directory)
    for name in (CONFIG_FILE, META_FILE, ADAPTER_DIR):
        require((directory / name).exists(), f"{directory} is not an adapter export: {name} missing")
    return OmegaConf.load(directory / CONFIG_FILE), json.loads((directory / META_FILE).read_text())


def evaluate(directory: str | os.PathLike[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Base model + method + exported adapter → test metrics; returns (measured, recorded)."""
    import pytorch_lightning as pl

    from peftlab.config_utils import to_dict
    from peftlab.train import build_model

    directory = Path(directory)
    cfg, meta = load_export(directory)
    model, method, task, _, preprocessor = build_model(cfg)
    model = method.load_method_state(model, meta.get("method_state", {}))
    model = method.load_adapter(model, directory / ADAPTER_DIR)
    task.setup(preprocessor, cfg.seed)
    module = PeftModule(model, method, task, to_dict(cfg.optim))
    # one process, whatever the run used: a multi-process run scored the same batches (docs/multi_gpu.md)
    measured: dict[str, float] = {}
    with global_state.kept():  # what Lightning changes process-wide (peftlab.global_state)
        trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[],
                                                      enable_progress_bar=False, default_root_dir=str(directory),
                                                      strategy="auto", devices=1, num_nodes=1)
        for row in trainer.test(module, datamodule=TaskDataModule(task, cfg.get("num_workers", 0)), verbose=False):
            measured.update({k: float(v) for k, v in row.items()})
    return measured, meta.get("recorded_metrics", {})


def human(n: int) -> str:
    """``n`` bytes as B/KiB/MiB/GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
