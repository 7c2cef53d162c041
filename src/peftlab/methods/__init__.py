"""Method registry: ``build_method(cfg.method)`` → a configured :class:`Method`.

Each sub-module registers its method with ``@METHODS.register(name)``; they are discovered automatically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peftlab.config_utils import build_dataclass, to_dict
from peftlab.methods.base import Method, MethodConfig
from peftlab.registry import Registry

METHODS: Registry[type[Method]] = Registry("method", __name__)


def build_method(cfg: Mapping[str, Any]) -> Method:
    """The method named ``cfg["name"]`` with its config validated."""
    values = to_dict(cfg)
    cls = METHODS.get(str(values.get("name")))
    return cls(build_dataclass(cls.config_cls, values, f"method '{values['name']}'"))


__all__ = ["METHODS", "Method", "MethodConfig", "build_method"]
