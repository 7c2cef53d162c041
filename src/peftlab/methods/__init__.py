"""Method registry: ``build_method(cfg.method)`` → a configured :class:`Method`.

Each sub-module registers its method with ``@METHODS.register(name)``; they are discovered automatically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peftlab.methods.base import Method, MethodConfig
from peftlab.registry import Registry

METHODS: Registry[type[Method]] = Registry("method", __name__, "method")


def build_method(cfg: Mapping[str, Any]) -> Method:
    """The method named ``cfg["name"]`` with its config validated."""
    return METHODS.build(cfg, "name")


__all__ = ["METHODS", "Method", "MethodConfig", "build_method"]
