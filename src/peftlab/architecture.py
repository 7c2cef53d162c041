"""The project's config composed outside a run, and the backbone it names built on the meta device (no weights).

Shared by the budget calculator (:mod:`peftlab.budget`) and the memory model (:mod:`peftlab.memory`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from peftlab.config_utils import require
from peftlab.errors import ConfigError
from peftlab.models import ModelSpec, load_backbone, resolve_path


def compose(overrides: list[str]) -> DictConfig:
    """The project's Hydra config (``conf/`` of the repository) with ``overrides``; no run directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    require(conf.is_dir(), f"peftlab's conf/ directory not found at {conf}")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _architecture_spec(spec: ModelSpec) -> ModelSpec:
    """A spec that builds the same architecture with no weights to fetch."""
    if spec.source == "timm":
        return dataclasses.replace(spec, pretrained=False)
    if spec.source == "hf_random" or spec.config:
        return dataclasses.replace(spec, source="hf_random")
    import transformers

    try:  # a local directory, a package-shipped model or the HF cache: config.json only
        config = transformers.AutoConfig.from_pretrained(resolve_path(spec.path)).to_dict()
    except OSError as err:
        raise ConfigError(
            f"model '{spec.name}' keeps no architecture under `config:` in conf/model/{spec.name}.yaml and its "
            f"config.json is not available offline ({type(err).__name__}); add the dimensions to the yaml"
        ) from err
    keep = {k: v for k, v in config.items() if k not in ("architectures", "id2label", "label2id", "num_labels",
                                                          "problem_type", "transformers_version", "dtype")}
    return dataclasses.replace(spec, source="hf_random", config=keep)


def meta_backbone(spec: ModelSpec, head: str, num_labels: int | None) -> nn.Module:
    """The backbone with ``head``, built on the meta device: shapes only, no memory, no download."""
    with torch.device("meta"):
        return load_backbone(_architecture_spec(spec), head, num_labels)


def with_default_task(overrides: list[str]) -> list[str]:
    """``overrides`` plus ``task=<model.default_task>`` when they name no task and the model config has one."""
    if any(o.lstrip("+~").split("=", 1)[0] == "task" for o in overrides):
        return overrides
    default = compose(overrides).model.get("default_task")
    return [*overrides, f"task={default}"] if default else overrides
