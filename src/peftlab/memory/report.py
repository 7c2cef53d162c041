"""``python -m peftlab.budget <overrides> --memory``: the prediction for a composed config, described."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig

from peftlab.architecture import compose, with_default_task
from peftlab.config_utils import require
from peftlab.errors import ConfigError
from peftlab.memory.predict import predict_config
from peftlab.memory.states import GiB, MemorySetting, Prediction

SEQ_KEYS = ("cutoff_len", "max_length", "max_seq_length")  # the task options that bound a sequence's tokens
BOOLEANS = {"true": True, "false": False}
KINDS = {"frozen_weights": "frozen weights", "trained_params": "trained params", "master_copies": "fp32 master copies",
         "gradients": "gradients", "optimizer_state": "optimizer state (AdamW)", "method_state": "method state",
         "activations": "activations (end of forward)", "offloaded": "in CPU memory"}
GPUS = (24, 40, 80)  # GiB sizes of common GPUs
# What a real GPU needs beyond the predicted peak of allocated tensors (docs/memory.md "Fits: the margin"):
# - CONTEXT, 1 GiB, device memory outside PyTorch's allocator: the CUDA context with its loaded kernels and library
#   handles. At initialisation with lazy module loading (CUDA >= 11.7, PyTorch's default) it is ~300-430 MiB
#   (PyTorch maintainers: pytorch/pytorch#107667 "~300MB", #109888 "around 400MB"; 426 MiB measured with torch
#   2.10/cu130 on an RTX 6000 Ada in unslothai/unsloth-zoo#1053); kernels load as a run first calls them (eager
#   loading of all of them took ">1000MB", #107667), so 1 GiB leaves ~0.6 GiB for them: an assumption on top of the
#   sources, which scripts/device_check_offload.py measures (context at start and memory outside PyTorch at the end).
# - WORKSPACES, 64 MiB, inside torch.cuda.max_memory_allocated but not predicted: the cuBLAS workspace, 32 MiB on
#   Hopper (CUBLAS_WORKSPACE_CONFIG default :4096:8; :4096:2:16:8 = 8 MiB before: PyTorch docs
#   cuda_environment_variables.rst, test/test_cuda.py test_cublas_workspace_explicit_allocation) and cuBLASLt's,
#   32 MiB on Hopper (4 MiB on Ampere >= 24 GiB: pytorch/pytorch#120925, CUDABlas.cpp _parseChosenWorkspaceSize).
# - RESERVE, 10% of the peak, the caching allocator's reserve above allocation (max_memory_reserved over
#   max_memory_allocated): requests rounded up (to 512 B; above 10 MiB to 2 MiB), small ones packed into 2 MiB and
#   20 MiB segments (c10/cuda/CUDACachingAllocator.cpp kRoundLarge, kLargeBuffer), and fragmentation, which depends
#   on the allocation pattern (PyTorch "CUDA memory management"; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
#   reduces it): no published ratio holds for every run, so 10% is an assumption the device check measures.
RESERVE = 0.10
CONTEXT = GiB
WORKSPACES = 64 * 2**20


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides apart from the memory settings (``batch= seq= precision= grad_checkpointing= device=
    offload= foreach= optimizer_offload=``)."""
    keys = {f.name for f in dataclasses.fields(MemorySetting)}
    hydra, settings = [], {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in keys:
            settings[key] = value
        else:
            hydra.append(item)
    return hydra, settings


def memory_setting(cfg: DictConfig, settings: dict[str, str]) -> MemorySetting:
    """The settings given on the command line; the rest from the config: batch = ``task.batch_size``, seq = the
    task's ``cutoff_len``/``max_length``/``max_seq_length``, gradient checkpointing = ``model.gradient_checkpointing``,
    the optimizer offload = ``optim.offload``; precision ``bf16-mixed`` and device ``cuda`` (the GPU trainer: SMT sums
    offloaded, AdamW foreach)."""
    values: dict[str, Any] = {"batch": cfg.task.get("batch_size"),
                              "seq": next((cfg.task[k] for k in SEQ_KEYS if cfg.task.get(k)), 1),
                              "grad_checkpointing": bool(cfg.model.get("gradient_checkpointing", False)),
                              "optimizer_offload": bool(cfg.optim.get("offload", False))}
    for key, text in settings.items():
        if key in ("batch", "seq"):
            require(text.isdigit(), f"{key}={text} is not an integer >= 1 (e.g. {key}=16)")
            values[key] = int(text)
        elif key in ("precision", "device"):
            values[key] = text
        else:
            require(text.lower() in BOOLEANS, f"{key}={text} is not a boolean: give {key}=true or {key}=false")
            values[key] = BOOLEANS[text.lower()]
    return MemorySetting(**values)


def report(overrides: list[str]) -> str:
    """``python -m peftlab.budget <overrides> --memory``: the prediction for the composed config, described; when
    it fits no GPU of the largest size, the same with the settings that make it fit (:func:`fitting`)."""
    hydra, settings = split_overrides(overrides)
    cfg = compose(with_default_task(hydra))
    setting = memory_setting(cfg, settings)
    pred = predict_config(cfg, setting)
    text = describe(cfg, setting, pred)
    if "none" in fits(pred.peak) or GPUS[-1] not in fitting_sizes(pred.peak):
        found = fitting(cfg, setting)
        if found is None:
            return text + f"\nno setting of optim.offload / grad_checkpointing fits one {GPUS[-1]} GiB GPU"
        change, better = found
        text += (f"\n\nfits one {GPUS[-1]} GiB GPU with {change}:\n" + describe(cfg, replace(setting, **{
            k: True for k in change_keys(change)}), better))
    return text


def change_keys(change: str) -> list[str]:
    """``optim.offload=true grad_checkpointing=true`` → the :class:`MemorySetting` fields it sets."""
    return [{"optim.offload": "optimizer_offload"}.get(k, k) for k in (c.split("=")[0] for c in change.split())]


def fitting(cfg: DictConfig, setting: MemorySetting) -> tuple[str, Prediction] | None:
    """The first of: the optimizer in CPU memory (``optim.offload=true``, for methods with a full-parameter phase),
    gradient checkpointing, both; that fits one GPU of the largest size; with its prediction."""
    for change in ("optim.offload=true", "grad_checkpointing=true", "optim.offload=true grad_checkpointing=true"):
        keys = change_keys(change)
        if all(getattr(setting, k) for k in keys):
            continue
        try:
            pred = predict_config(cfg, replace(setting, **dict.fromkeys(keys, True)))
        except ConfigError:  # e.g. optim.offload=true for a method that trains part of the model
            continue
        if GPUS[-1] in fitting_sizes(pred.peak):
            return change, pred
    return None


def gib(n: int | float) -> str:
    return f"{n / GiB:.2f}"


def with_margin(peak: int) -> float:
    """The device memory a predicted peak of allocated tensors needs: the peak with the cuBLAS workspaces
    (:data:`WORKSPACES`), + :data:`RESERVE` of it for the caching allocator's reserve above allocation, + the CUDA
    context (:data:`CONTEXT`); the sources are in the comment above the constants and docs/memory.md."""
    return (peak + WORKSPACES) * (1 + RESERVE) + CONTEXT


def fitting_sizes(peak: int) -> list[int]:
    return [g for g in GPUS if with_margin(peak) <= g * GiB]


def fits(peak: int) -> str:
    """The GPU sizes of :data:`GPUS` a peak fits on, margin included (one device), or "none"."""
    return ", ".join(map(str, fitting_sizes(peak))) or "none"


def describe(cfg: DictConfig, setting: MemorySetting, pred: Prediction) -> str:
    """The split per phase (GiB), the engine and the moment of each phase's peak, and the overall peak."""
    phases = list(pred.phases)
    checkpointing = "on" if setting.grad_checkpointing else "off"
    lines = [f"model={cfg.model.name} method={cfg.method.name} task={cfg.task.name}: {pred.inputs}, "
             f"{setting.precision}, gradient checkpointing {checkpointing}, "
             f"AdamW {'foreach' if setting.foreach else 'per tensor'}",
             f"{'GiB':34s}" + "".join(f"{pred.labels[p]:>22s}" for p in phases)]
    for kind, label in KINDS.items():
        lines.append(f"{label:34s}" + "".join(f"{gib(getattr(pred.phases[p], kind)):>22s}" for p in phases))
    for p in phases:
        s = pred.phases[p]
        moment = max(s.moments, key=lambda m: s.moments[m])
        lines.append(f"peak of {pred.labels[p]}: {gib(s.peak)} GiB at the {moment}; optimizer: {s.engine}"
                     + (f"; + {gib(s.offloaded)} GiB in CPU memory" if s.offloaded else ""))
    sizes = fits(pred.peak)
    lines.append(f"peak: {gib(pred.peak)} GiB; with the margin (+{gib(WORKSPACES)} GiB cuBLAS workspaces, "
                 f"+{RESERVE:.0%} allocator reserve, +{gib(CONTEXT)} GiB CUDA context) "
                 f"{gib(with_margin(pred.peak))} GiB: "
                 + (f"fits one GPU of {sizes} GiB" if sizes != "none" else
                    f"fits none of the GPU sizes {', '.join(map(str, GPUS))} GiB"))
    lines += [f"assumed: {n}" for n in pred.notes]
    return "\n".join(lines)
