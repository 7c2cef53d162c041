"""Build validated dataclass configs from Hydra/OmegaConf nodes.

Every config dataclass (``ModelSpec``, each method's and task's config, the run's top-level options) is built
by :func:`build_dataclass`, which checks each given value against the field's annotation before the
dataclass exists: its type (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``list[X]``, ``dict[K, V]``)
and, for fields annotated with a :class:`Range` (``PositiveInt``, ``Dropout``, ...), its range. A bad value
fails with one line naming the key, what it must be and what it got; the dataclass's ``__post_init__`` then
checks only what involves several fields or a list of names.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

from omegaconf import DictConfig, OmegaConf

from peftlab.errors import ConfigError

C = TypeVar("C")
CONF = Path(__file__).resolve().parents[2] / "conf"  # the repository's Hydra configs


@dataclass(frozen=True)
class Range:
    """The closed (or, with ``low_open``/``high_open``, open) interval a numeric field must lie in."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low, high = (int(x) if x is not None and float(x).is_integer() else x for x in (self.low, self.high))
        if high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
UnitInterval = Annotated[float, Range(0, 1)]  # [0, 1]
Dropout = Annotated[float, Range(0, 1, high_open=True)]  # [0, 1): a probability that cannot drop everything
Density = Annotated[float, Range(0, 1, low_open=True)]  # (0, 1]: a kept fraction that keeps something
OpenUnit = Annotated[float, Range(0, 1, low_open=True, high_open=True)]  # (0, 1), e.g. an EMA coefficient
Seed = Annotated[int, Range(0, 2**32 - 1)]  # what numpy and torch accept as a seed


class _Mismatch(Exception):
    """A value that does not fit an annotation (turned into a ConfigError by :func:`check_value`)."""


def describe(tp: Any) -> str:
    """What a value of annotation ``tp`` must be, in words ("an integer >= 1", "a list of strings or null")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        ranges = [str(m) for m in args[1:] if isinstance(m, Range)]
        return " ".join([describe(args[0]), *ranges])
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"a list of {describe(args[0]).split(' ', 1)[1]}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "any value" if tp is Any else f"a {getattr(tp, '__name__', tp)}")


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as annotation ``tp`` wants it (an integral float for an int becomes the int); raises
    :class:`_Mismatch` when it does not fit. Booleans are not numbers here, and numbers are not strings."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        value = _coerce(value, args[0])
        if any(isinstance(m, Range) and value not in m for m in args[1:]):
            raise _Mismatch
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for member in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, member)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0]) for v in value] if args and origin is list else list(value)
    elif origin is dict or tp is dict:
        if isinstance(value, Mapping):
            if not args or args[1] is Any:
                return value
            return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def check_value(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked (and coerced) against annotation ``tp``; a :class:`ConfigError` names ``key`` otherwise."""
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise ConfigError(f"{key} must be {describe(tp)}, got {value!r}") from None


def to_dict(node: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A plain, resolved dict from an OmegaConf node (or a dict, returned as a copy)."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def build_dataclass(cls: type[C], node: DictConfig | Mapping[str, Any], where: str, prefix: str) -> C:
    """Instantiate ``cls`` from ``node``: unknown keys fail with the list of valid ones (and the closest match),
    every value is checked against its field's annotation (:func:`check_value`, key ``<prefix>.<field>``), then
    the dataclass's own ``__post_init__`` checks what involves several fields."""
    values = to_dict(node)
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    check_known(where, list(values), names, str(sorted(names)))
    missing = [f.name for f in fields if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    require(not missing, f"{where}: missing option(s) {missing}")
    dotted = f"{prefix}." if prefix else ""
    return cls(**{k: check_value(f"{dotted}{k}", v, hints[k]) for k, v in values.items()})


def check_known(where: str, given: list[str], valid: list[str], valid_text: str) -> None:
    """Keys of ``given`` not in ``valid`` fail with the closest valid name of each and ``valid_text``."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        close = [m for u in unknown for m in difflib.get_close_matches(u, valid, n=1)]
        hint = f" (did you mean {close}?)" if close else ""
        raise ConfigError(f"{where}: unknown option(s) {unknown}{hint}; valid options: {valid_text}")


def instantiate(node: Any, where: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; a constructor that rejects its arguments fails with one line
    naming ``where`` and the cause (Hydra would print it inside a long traceback)."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(" ".join(f"{where}: {type(cause).__name__}: {cause}".split())) from err


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_writable(key: str, directory: Path) -> None:
    """Fail now, not after training, when a run could not create or write ``directory`` (nothing is created)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = "not a directory" if not existing.is_dir() else "read-only"
    require(existing.is_dir() and os.access(existing, os.W_OK | os.X_OK),
            f"{key}={directory} is not writable ({existing} is {problem})")
