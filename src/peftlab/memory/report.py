"""``python -m peftlab.budget <overrides> --memory``: the prediction for a composed config, described."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig

from peftlab.architecture import compose, with_default_task
from peftlab.config_utils import require
from peftlab.memory.predict import predict_config
from peftlab.memory.states import GiB, MemorySetting, Prediction

SEQ_KEYS = ("cutoff_len", "max_length", "max_seq_length")  # the task options that bound a sequence's tokens
BOOLEANS = {"true": True, "false": False}
KINDS = {"frozen_weights": "frozen weights", "trained_params": "trained params", "master_copies": "fp32 master copies",
         "gradients": "gradients", "optimizer_state": "optimizer state (AdamW)", "method_state": "method state",
         "activations": "activations (end of forward)"}
GPUS = (24, 40, 80)  # GiB sizes of common GPUs


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
    task's ``cutoff_len``/``max_length``/``max_seq_length``, gradient checkpointing = ``model.gradient_checkpointing``;
    precision ``bf16-mixed`` and device ``cuda`` (the GPU trainer: SMT sums offloaded, AdamW foreach)."""
    values: dict[str, Any] = {"batch": cfg.task.get("batch_size"),
                              "seq": next((cfg.task[k] for k in SEQ_KEYS if cfg.task.get(k)), 1),
                              "grad_checkpointing": bool(cfg.model.get("gradient_checkpointing", False))}
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
    """``python -m peftlab.budget <overrides> --memory``: the prediction for the composed config, described."""
    hydra, settings = split_overrides(overrides)
    cfg = compose(with_default_task(hydra))
    setting = memory_setting(cfg, settings)
    return describe(cfg, setting, predict_config(cfg, setting))


def gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def fits(peak: int) -> str:
    """The GPU sizes of :data:`GPUS` a peak fits on (allocated bytes, one device), or "none"."""
    return ", ".join(f"{g}" for g in GPUS if peak <= g * GiB) or "none"


def describe(cfg: DictConfig, setting: MemorySetting, pred: Prediction) -> str:
    """The split per phase (GiB), the moment of each phase's peak, and the overall peak."""
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
        lines.append(f"peak of {pred.labels[p]}: {gib(s.peak)} GiB at the {moment}"
                     + (f"; + {gib(s.offloaded)} GiB in CPU memory" if s.offloaded else ""))
    sizes = fits(pred.peak)
    lines.append(f"peak: {gib(pred.peak)} GiB (" + (f"fits one GPU of: {sizes} GiB)" if sizes != "none" else
                                                   f"fits none of the GPU sizes {', '.join(map(str, GPUS))} GiB)"))
    lines += [f"assumed: {n}" for n in pred.notes]
    return "\n".join(lines)
