"""Name → class registries with auto-discovery.

A method or task module registers itself with a decorator; every module of the package is imported
the first time a registry is queried, so adding a method or task needs no edit outside its own file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from peftlab.config_utils import build_dataclass, to_dict
from peftlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of ``kind`` (e.g. "method") whose members live in the sub-modules of ``package``; their configs
    are the ``section`` node of the run config (``method``, ``task``)."""

    def __init__(self, kind: str, package: str, section: str) -> None:
        self.kind = kind
        self.package = package
        self.section = section
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("lora")`` on a class makes it buildable by name."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{self.package}."):
            importlib.import_module(info.name)

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._discover()
        if name not in self._items:
            kinds = f"{self.kind[:-1]}ies" if self.kind.endswith("y") else f"{self.kind}s"
            raise ConfigError(f"unknown {self.kind} '{name}'; valid {kinds}: {', '.join(self.names())}")
        return self._items[name]

    def build(self, cfg: Mapping[str, Any], key: str) -> Any:
        """``cls(cls.config_cls(**cfg))`` for the class named by ``cfg[key]``; the config validates itself."""
        values = to_dict(cfg)
        cls = self.get(str(values.get(key)))
        return cls(build_dataclass(cls.config_cls, values, f"{self.kind} '{values.get('name')}'", self.section))
