"""``run(cfg)``: the whole recipe of one run, called by the root ``train.py``.

validate → seed → task → backbone → method → trainer → fit → test → record.
"""

from __future__ import annotations

import inspect
import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from torch import nn

from peftlab import results
from peftlab.config_utils import build_dataclass, check_known, check_writable, instantiate, require, to_dict
from peftlab.data import TaskDataModule
from peftlab.errors import ConfigError, DataUnavailableError
from peftlab.methods import Method, build_method
from peftlab.methods.base import count_parameters
from peftlab.models import KINDS, ModelSpec, load_backbone, load_preprocessor, models_of_kind
from peftlab.module import PeftModule
from peftlab.run_config import OptimConfig, RunConfig, top_level
from peftlab.tasks import Task, build_task

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> tuple[ModelSpec, Method, Task]:
    """Check the whole config and what a run needs from the machine (local data, a GPU when the trainer asks for
    one, writable output dirs, a readable checkpoint) before any data or weights load; return the built parts."""
    spec, method, task = validate_config(cfg)
    _check_local_data(task)
    _check_accelerator(cfg.trainer)
    for key in ("results_dir", "output_dir"):
        where = OmegaConf.select(cfg, f"paths.{key}", throw_on_resolution_failure=False)  # None outside Hydra
        if where:
            check_writable(f"paths.{key}", Path(where))
    ckpt = cfg.get("ckpt_path")
    if ckpt and ckpt != "last" and Path(ckpt).is_file():
        _check_checkpoint(Path(ckpt))
    return spec, method, task


def validate_config(cfg: DictConfig) -> tuple[ModelSpec, Method, Task]:
    """The config alone: every key known and every value of its type and range (the dataclasses of
    ``peftlab.run_config``, the model, method and task), the model able to serve the task, the method's targets,
    the trainer's options. What the budget calculator needs, without data or outputs."""
    build_dataclass(RunConfig, top_level(cfg), "config", "")
    build_dataclass(OptimConfig, cfg.optim, "optim", "optim")
    spec = build_dataclass(ModelSpec, cfg.model, f"model '{cfg.model.get('name')}'", "model")
    method = build_method(cfg.method)
    task = build_task(cfg.task)
    _check_pairing(spec, task)
    if method.config.targets:
        _check_targets(spec, list(method.config.targets))
    _check_trainer(cfg)
    return spec, method, task


def _check_pairing(spec: ModelSpec, task: Task) -> None:
    """The backbone must serve the task's head (an encoder for classification/QA, a causal LM for generation, a
    timm ViT for images): otherwise the run would fail deep inside loading or the first batch."""
    if spec.serves(task.head):
        return
    needed = next(kind for kind, (heads, _) in KINDS.items() if task.head in heads)
    choices = ", ".join(models_of_kind(needed))
    raise ConfigError(f"model '{spec.name}' is {KINDS[spec.kind][1]} and cannot serve task '{task.name}' "
                      f"(head {task.head}), which needs {KINDS[needed][1]}; models that serve it: {choices} "
                      "(model=<name>)")


def _check_targets(spec: ModelSpec, targets: list[str]) -> None:
    """Unknown logical targets fail here; targets that resolve to a fused Linear (ViT's qkv) are said once."""
    resolved = spec.resolve_targets(targets)
    fused = [t for t in resolved if t in spec.fused and t not in targets]
    if fused:
        how = "; ".join(f"{', '.join(spec.fused[t])} in one Linear ({t})" for t in fused)
        print(f"[peftlab] model '{spec.name}' computes {how}: method.targets {targets} adapt {resolved}")


def _check_trainer(cfg: DictConfig) -> None:
    """Options the trainer class does not take (``+trainer.max_epoch=1``), found from its own signature, and a
    run that would train nothing: both would otherwise surface only after the model loaded, or not at all."""
    node = cfg.trainer
    target = str(node.get("_target_"))
    try:
        params = inspect.signature(hydra.utils.get_class(target)).parameters
    except (ImportError, ValueError) as err:  # what Hydra raises for a _target_ that is not an importable class
        raise ConfigError(" ".join(f"trainer._target_={target} is not a class ({err})".split())) from err
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        check_known("trainer", [str(k) for k in node if not str(k).startswith("_")], list(params),
                    f"the arguments of {target}")
    fixes = {"max_epochs": "set task.epochs=N (trainer.max_epochs follows it)",
             "max_steps": "set it > 0 (-1: no limit)",
             "limit_train_batches": "set it > 0 (a count, or a fraction of the epoch)"}
    for key, fix in fixes.items():
        value = OmegaConf.select(node, key, throw_on_resolution_failure=False)
        require(value != 0 or not cfg.get("train", True),
                f"trainer.{key}=0 trains nothing: {fix}, or train=false to only evaluate")


def _check_accelerator(trainer: DictConfig) -> None:
    """A GPU trainer (``trainer=gpu``) needs the GPUs it asks for; Lightning would say so only after loading."""
    accelerator = trainer.get("accelerator")
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    visible = torch.cuda.device_count()
    require(visible > 0, f"trainer.accelerator={accelerator} needs a CUDA GPU and this machine shows none: "
            "use trainer=cpu")
    devices = trainer.get("devices")
    require(not isinstance(devices, int) or devices <= visible,
            f"trainer.devices={devices} but {visible} GPU(s) are visible: set trainer.devices={visible} "
            "(-1 = all)")


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


def _instantiate_all(cfg: DictConfig, group: str) -> list[Any]:
    """Instantiate every entry of a config group such as ``logger`` or ``callbacks`` (may be empty)."""
    return [instantiate(c, f"{group}.{name}") for name, c in (cfg.get(group) or {}).items()]


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
    loggers = _instantiate_all(cfg, "logger")
    callbacks = _instantiate_all(cfg, "callbacks")
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", logger=loggers or False, callbacks=callbacks)

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
