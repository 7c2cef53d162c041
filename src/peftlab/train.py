"""``run(cfg)``: the whole recipe of one run, called by the root ``train.py``.

validate → seed → task → backbone → method → trainer → fit → test → record.
"""

from __future__ import annotations

import inspect
import logging
import shlex
import time
import zipfile
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies import FSDPStrategy
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from peftlab import distributed, faults, global_state, offload, optim, precision, results
from peftlab.checkpoint import load_checkpoint
from peftlab.config_utils import build_dataclass, check_known, check_writable, instantiate, require, to_dict
from peftlab.data import TaskDataModule
from peftlab.errors import ConfigError, DataUnavailableError
from peftlab.logs import quiet_known_warnings, route_library_logs
from peftlab.methods import Method, build_method
from peftlab.methods.base import count_parameters
from peftlab.models import KINDS, ModelSpec, load_backbone, load_preprocessor, models_of_kind
from peftlab.module import PeftModule, planned_optimizer_steps
from peftlab.run_config import OptimConfig, RunConfig, top_level
from peftlab.tasks import Task, build_task

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> tuple[ModelSpec, Method, Task]:
    """Check the whole config and what a run needs from the machine (local data, a GPU when the trainer asks for
    one, writable output dirs, a readable checkpoint) before any data or weights load; return the built parts."""
    spec, method, task = validate_config(cfg)
    precision.check(spec.dtype, OmegaConf.select(cfg, "trainer.precision", default="32-true"))
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
    require("lr" not in cfg.optim, "optim.lr is not a setting: the learning rate is method.lr (e.g. method.lr=1e-3)")
    optim_config = build_dataclass(OptimConfig, cfg.optim, "optim", "optim")
    spec = build_dataclass(ModelSpec, cfg.model, f"model '{cfg.model.get('name')}'", "model")
    method = build_method(cfg.method)
    optim.check_run(optim_config, OmegaConf.select(cfg, "trainer.max_epochs", throw_on_resolution_failure=False),
                    method.restarts_schedule and method.changes_trainable_set)
    task = build_task(cfg.task)
    _check_pairing(spec, task)
    if method.config.targets:
        _check_targets(spec, list(method.config.targets))
    _check_trainer(cfg)
    _validate_processes(cfg, spec, method)
    offload.check(cfg)
    return spec, method, task


def _validate_processes(cfg: DictConfig, spec: ModelSpec, method: Method) -> None:
    """Multi-process settings that cannot give the single-process answer (docs/multi_gpu.md)."""
    trainer = cfg.get("trainer") or {}
    require(not trainer.get("use_distributed_sampler", False), "trainer.use_distributed_sampler must stay false: "
            "peftlab's samplers shard the data per process themselves (docs/multi_gpu.md)")
    distributed.check_strategy(trainer.get("strategy", "auto"), method.name, method.changes_trainable_set,
                               frozen_dtype=spec.dtype if method.name != "full" else None)


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
    endless = node.get("max_epochs") == -1 and node.get("max_steps", -1) == -1
    require(not endless or not cfg.get("train", True), "trainer.max_epochs=-1 (no epoch limit) with "
            "trainer.max_steps=-1 never ends, and the lr schedule needs the run's length: set task.epochs=N "
            "(trainer.max_epochs follows it) or trainer.max_steps=N")


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
    """A Lightning checkpoint is a torch zip archive; a truncated or foreign file, or one carrying a pickled
    Python object (see :func:`peftlab.checkpoint.load_checkpoint`), fails here, before training."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({err})") from err
    require(bad is None, f"ckpt_path={path} is corrupted (bad CRC in '{bad}')")
    load_checkpoint(path, mmap=True)  # mapped, not read: only what the file's pickle holds is checked


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
    log.info(f"[peftlab] method={method.name} model={spec.name} task={task.name}: "
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
        log.info(f"[peftlab] resuming from {last} (auto_resume; auto_resume=false starts over)")
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
        return results.from_repo(pointer.read_text().strip())
    path = results.record_path(cfg.paths.results_dir, module.task.name, module.method.name, model_name, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pointer.write_text(results.repo_relative(path))
    return path


def _write_record(path: Path | None, record: dict[str, Any]) -> None:
    """Write the run record, every path in it relative to the repository root (see results.repo_relative); no
    path: this process is not global rank 0, which alone writes (docs/multi_gpu.md)."""
    if path is not None:
        results.write_json_atomic(path, results.repo_relative_paths(record))


def _was_interrupted(err: BaseException) -> bool:
    """Ctrl-C or SIGTERM. Lightning catches the KeyboardInterrupt of Ctrl-C and calls ``sys.exit(1)`` inside its
    handler, so the SystemExit that arrives here carries the KeyboardInterrupt as its context."""
    return isinstance(err, (KeyboardInterrupt, SIGTERMException)) or isinstance(err.__context__, KeyboardInterrupt)


def resume_command(out_dir: Path) -> str:
    """The command that continues this run from its ``last.ckpt``: the same overrides + ``hydra.run.dir``
    (relative to the working directory when inside it, so it can be pasted where the run was started)."""
    where = out_dir.absolute()
    if where.is_relative_to(Path.cwd()):
        where = where.relative_to(Path.cwd())
    return f"{results.command()} {shlex.quote(f'hydra.run.dir={where}')}"


def _record_failed(path: Path | None, record: dict[str, Any], error: str) -> None:
    """Write the record of a run that failed with ``error`` (on any of its processes)."""
    record.update(status="failed", error=error, finished=results.now())
    _write_record(path, record)


def _record_interrupted(path: Path | None, record: dict[str, Any], err: BaseException, out_dir: Path) -> None:
    """Write the record of an interrupted run; after printing the command that resumes it, exit with the shell's
    status for the signal: 130 Ctrl-C, 143 SIGTERM."""
    command = resume_command(out_dir)
    record.update(status="interrupted", finished=results.now(), resume_command=command)
    _write_record(path, record)
    if path is not None:
        log.warning(f"[peftlab] interrupted; record: {results.repo_relative(path)}; resume with:\n  {command}")
    raise SystemExit(143 if isinstance(err, SIGTERMException) else 130) from None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; write its record; return its metrics. The process-wide state Lightning
    changes on the way (deterministic algorithms, SIGINT after a Ctrl-C: :mod:`peftlab.global_state`) is put back,
    for callers that go on in the same process."""
    with global_state.kept():
        return _run(cfg)


def _run(cfg: DictConfig) -> dict[str, Any]:
    start = time.time()
    quiet_known_warnings()
    route_library_logs()
    module, datamodule, spec = build(cfg)
    trainable_at_start, total = count_parameters(module.model)
    out_dir = Path(cfg.paths.output_dir)
    loggers = _instantiate_all(cfg, "logger")
    watch = faults.FaultWatch()  # several processes: a fault on one stops all, and is the one recorded
    callbacks = [*_instantiate_all(cfg, "callbacks"), watch]
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", logger=loggers or False, callbacks=callbacks,
                                      strategy=distributed.build_strategy(cfg.trainer.get("strategy")))
    distributed.check_launch(trainer)
    # several processes: global rank 0 alone writes the record and its pointer (docs/multi_gpu.md)
    rank, processes = distributed.launch_position(trainer)
    leader = rank == 0

    # the method's phases must fit in the run (e.g. SMT's warm-up): checked now, before any record is written
    module.method.check_total_steps(planned_optimizer_steps(trainer, len(datamodule.train_dataloader())))
    ckpt_path = resume_checkpoint(cfg)
    path = _record_path(cfg, out_dir, spec.name, module, resuming=ckpt_path is not None) if leader else None
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
        "resumed_from": ckpt_path,  # a path, or "last"
        "processes": processes,
    }
    _write_record(path, record)  # "running": a run killed outright (SIGKILL, lost node) leaves this behind
    watch.on_remote_fault = lambda error: _record_failed(path, record, error)
    try:
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("train/")}
        if cfg.get("test", True):
            for row in trainer.test(module, datamodule=datamodule, verbose=False):
                metrics.update({k: float(v) for k, v in row.items()})
    except BaseException as err:
        if _was_interrupted(err):
            _record_interrupted(path, record, err, out_dir)
        watch.fail(err, lambda error: _record_failed(path, record, error))
        raise
    finally:
        watch.stop()
    # FSDP leaves each process its shard of the parameters; under FSDP the trainable set never changes (check_strategy)
    trainable = trainable_at_start if isinstance(trainer.strategy, FSDPStrategy) else count_parameters(module.model)[0]
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
        # dtypes of the frozen and trained tensors at the end, and the autocast setting (docs/precision.md)
        precision=precision.describe(module.model, module.method.trained_parameters(module.model),
                                     trainer.precision),
        optimizer=module.offload.history,  # which optimizer engine ran from which step (peftlab.offload)
        wall_time_s=time.time() - start,
        global_steps=trainer.global_step,
        memory=results.peak_memory(),
    )
    _write_record(path, record)
    if path is not None:
        main = f"test/{module.task.main_metric}"
        log.info(f"[peftlab] {main} = {metrics.get(main, float('nan')):.2f}; record: {results.repo_relative(path)}")
    return metrics
