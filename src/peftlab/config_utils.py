"""Build validated dataclass configs from Hydra/OmegaConf nodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError

C = TypeVar("C")


def to_dict(node: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A plain, resolved dict from an OmegaConf node (or a dict, returned as a copy)."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def build_dataclass(cls: type[C], node: DictConfig | Mapping[str, Any], where: str) -> C:
    """Instantiate ``cls`` from ``node``; unknown keys fail with the list of valid ones.

    Validation of values is the dataclass's own ``__post_init__``.
    """
    values = to_dict(node)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; valid options: {sorted(fields)}")
    return cls(**values)


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
