"""``run(cfg)``: the whole recipe of one run, called by the root ``train.py``.

validate → seed → task → backbone → method → trainer → fit → test → record.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from torch import nn

from peftlab import results
from peftlab.config_utils import build_dataclass, require, to_dict
from peftlab.data import TaskDataModule
from peftlab.errors import ConfigError, DataUnavailableError
from peftlab.methods import Method, build_method
from peftlab.methods.base import count_parameters
from peftlab.models import ModelSpec, load_backbone, load_preprocessor
from peftlab.module import PeftModule
from peftlab.tasks import Task, build_task

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> tuple[ModelSpec, Method, Task]:
    """Check the whole config and what a run needs from the machine (local data, writable output dirs, a readable
    checkpoint) before any data or weights load; return the built parts."""
    spec, method, task = validate_config(cfg)
    _check_local_data(task)
    for key in ("results_dir", "output_dir"):
        where = OmegaConf.select(cfg, f"paths.{key}", throw_on_resolution_failure=False)  # None outside Hydra
        if where:
            _check_writable(f"paths.{key}", Path(where))
    ckpt = cfg.get("ckpt_path")
    if ckpt and ckpt != "last" and Path(ckpt).is_file():
        _check_checkpoint(Path(ckpt))
    return spec, method, task


def validate_config(cfg: DictConfig) -> tuple[ModelSpec, Method, Task]:
    """The config alone (names, ranges, targets): what the budget calculator needs, without data or outputs."""
    spec = build_dataclass(ModelSpec, cfg.model, f"model '{cfg.model.get('name')}'")
    method = build_method(cfg.method)
    task = build_task(cfg.task)
    if method.config.targets:
        spec.target_regex(method.config.targets)  # unknown logical targets fail here
    o = cfg.optim
    require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    require(0 <= o.warmup_ratio < 1, f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    return spec, method, task


def _check_local_data(task: Task) -> None:
    """Local data a task names (VTAB ``data_root``, commonsense ``train_file``/``eval_dir``) must exist."""
    c = task.config
    for key in ("data_root", "eval_dir"):
        where = getattr(c, key, None)
        if where and where != "generated" and not Path(where).expanduser().is_dir():
            raise DataUnavailableError(f"task.{key}={where} is not a directory: download the data set "
                                       f"(docs/{c.family}.md) and point task.{key} to it")
    train_file = getattr(c, "train_file", None)
    if train_file and Path(train_file).suffix in (".json", ".jsonl") and not Path(train_file).expanduser().is_file():
        raise DataUnavailableError(f"task.train_file={train_file} not found: download it (docs/{c.family}.md) "
                                   "and point task.train_file to it")


def _check_writable(key: str, directory: Path) -> None:
    """Fail now, not after training, when a run could not write its outputs or record (nothing is created)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = "not a directory" if not existing.is_dir() else "read-only"
    require(existing.is_dir() and os.access(existing, os.W_OK | os.X_OK),
            f"{key}={directory} is not writable ({existing} is {problem})")


def _check_checkpoint(path: Path) -> None:
    """A Lightning checkpoint is a torch zip archive; a truncated or foreign file fails here, before training."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({err})") from err
    require(bad is None, f"ckpt_path={path} is corrupted (bad CRC in '{bad}')")


def build_model(cfg: DictConfig) -> tuple[nn.Module, Method, Task, ModelSpec, Any]:
    """Validate, seed, load the backbone and apply the method (no data yet); also used by adapter export.

    Returns (model, method, task, spec, preprocessor)."""
    spec, method, task = validate(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    model = load_backbone(spec, task.head, task.num_labels)
    preprocessor = load_preprocessor(spec, model)
    model = method.apply(model, spec)
    return model, method, task, spec, preprocessor


def build(cfg: DictConfig) -> tuple[PeftModule, TaskDataModule, ModelSpec]:
    """Validated parts → a ready LightningModule and DataModule (seeds first)."""
    model, method, task, spec, preprocessor = build_model(cfg)
    trainable, total = count_parameters(model)
    print(f"[peftlab] method={method.name} model={spec.name} task={task.name}: "
          f"trainable {trainable:,} / {total:,} params ({100 * trainable / total:.4f}%)")
    task.setup(preprocessor, cfg.seed)
    module = PeftModule(model, method, task, to_dict(cfg.optim), run_config=resume_fingerprint(cfg),
                        select=OmegaConf.select(cfg, "report.select"))
    return module, TaskDataModule(task, cfg.get("num_workers", 0), cfg.seed), spec


def resume_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it (see docs/resume.md)."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
            for key in ("seed", "model", "method", "task", "optim") if key in cfg}


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """What ``trainer.fit`` resumes from: ``ckpt_path`` (a file, or ``last`` = the newest ``last*.ckpt`` of this
    run's checkpoint dir) or, with ``auto_resume`` (default), the ``last.ckpt`` already in this run's checkpoint
    dir (a run started again with the same ``hydra.run.dir``); None starts from scratch."""
    explicit = cfg.get("ckpt_path")
    if explicit:
        require(explicit == "last" or Path(explicit).is_file(),
                f"ckpt_path={explicit}: no such file (give a checkpoint file, or 'last' for this run dir's last.ckpt)")
        return str(explicit)
    dirpath = OmegaConf.select(cfg, "callbacks.checkpoint.dirpath")
    last = Path(dirpath) / "last.ckpt" if dirpath else None
    if cfg.get("auto_resume", True) and last is not None and last.is_file():
        _check_checkpoint(last)
        print(f"[peftlab] resuming from {last} (auto_resume; auto_resume=false starts over)")
        return str(last)
    return None


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group such as ``logger`` or ``callbacks`` (may be empty)."""
    return [hydra.utils.instantiate(c) for c in (group or {}).values()]


def _record_path(cfg: DictConfig, out_dir: Path, model_name: str, module: PeftModule, resuming: bool) -> Path:
    """A new record path, or, when resuming, the killed run's (named in ``<output_dir>/record_path``), so a
    resumed run completes its own record instead of leaving a 'running' one behind."""
    pointer = out_dir / "record_path"
    if resuming and pointer.is_file():
        return Path(pointer.read_text().strip())
    path = results.record_path(cfg.paths.results_dir, module.task.name, module.method.name, model_name, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pointer.write_text(str(path))
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; write its record; return its metrics."""
    start = time.time()
    module, datamodule, spec = build(cfg)
    trainable_at_start, total = count_parameters(module.model)
    out_dir = Path(cfg.paths.output_dir)
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)

    ckpt_path = resume_checkpoint(cfg)
    path = _record_path(cfg, out_dir, spec.name, module, resuming=ckpt_path is not None)
    record: dict[str, Any] = {
        "record_version": results.RECORD_VERSION,
        "status": "running",
        "started": results.now(),
        "task": module.task.name,
        "method": module.method.name,
        "model": spec.name,
        "seed": cfg.seed,
        "tags": list(cfg.get("tags", [])),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git": results.git_commit(),
        "hardware": results.hardware(),
        "versions": results.versions(),
        "command": results.command(),
        "output_dir": str(out_dir),
        "resumed_from": ckpt_path,
    }
    try:
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("train/")}
        if cfg.get("test", True):
            for row in trainer.test(module, datamodule=datamodule, verbose=False):
                metrics.update({k: float(v) for k, v in row.items()})
    except BaseException as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", finished=results.now())
        results.write_json_atomic(path, record)
        raise
    trainable, _ = count_parameters(module.model)
    record.update(
        status="complete",
        finished=results.now(),
        metrics=metrics,
        main_metric=module.task.main_metric,
        # "trainable": the set the method ends up training (SMT/SPT switch from a warm-up or sensitivity phase
        # that touches more; LISA's γ active blocks), the count papers report and tables use
        params={"trainable": trainable, "total": total, "trainable_at_start": trainable_at_start,
                "trainable_pct": 100.0 * trainable / total,
                "method": module.method.extra_counts(module.model)},
        train_head=module.method.config.train_head,
        method_state=module.method.method_state(),  # e.g. SMT's selected blocks per layer and matrix type
        wall_time_s=time.time() - start,
        global_steps=trainer.global_step,
        memory=results.peak_memory(),
    )
    results.write_json_atomic(path, record)
    main = f"test/{module.task.main_metric}"
    print(f"[peftlab] {main} = {metrics.get(main, float('nan')):.2f}; record: {path}")
    return metrics
