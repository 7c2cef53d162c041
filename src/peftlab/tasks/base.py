"""The protocol every task implements.

A task supplies data (per split), batching, the training loss, per-batch predictions and the
metric over a whole split. The Lightning module calls only these, so it never branches on the
task family. Splits are ``train``, ``validation`` (model selection during training) and ``test``
(what is reported: for GLUE the dev set, as papers do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from peftlab.config_utils import PositiveInt, Seed

SPLITS = ("train", "validation", "test")


@dataclass
class TaskConfig:
    """Options every task has. Field types and ranges (``PositiveInt``...) are checked when the config is built
    (``peftlab.config_utils.build_dataclass``); ``__post_init__`` checks what involves several fields."""

    family: str  # registry name of the task class (glue, synthetic, squad, vtab, commonsense ...)
    name: str  # the task's own name (rte, squad_v2, cifar ...)
    main_metric: str = "accuracy"  # the metric papers report (checkpoint selection and sweeps use it)
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt = 64
    epochs: PositiveInt = 3
    max_train_samples: PositiveInt | None = None  # cap (debugging, tests); None = the whole split
    max_eval_samples: PositiveInt | None = None

    def __post_init__(self) -> None:
        """Checks that involve several fields (none here; subclasses extend it)."""


@dataclass(kw_only=True)
class GeneratedDataConfig:
    """Mixin for the data sets peftlab generates (offline demos and tests, never benchmarks): sizes and a
    ``data_seed`` independent of the training seed, so every run of a sweep sees the same examples."""

    num_train: PositiveInt = 1000
    num_validation: PositiveInt = 300
    data_seed: Seed = 1234


class Task:
    """Base class; subclasses are registered with ``@TASKS.register("<family>")``."""

    config_cls: ClassVar[type[TaskConfig]] = TaskConfig

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def head(self) -> str:
        """Model head this task needs: seq_cls, regression, qa_span, causal_lm or image_cls."""
        raise NotImplementedError

    @property
    def num_labels(self) -> int | None:
        """Output size of the head (None where the head does not need it)."""
        return None

    @property
    def main_metric(self) -> str:
        """The metric papers report for this task (``task.main_metric``)."""
        return self.config.main_metric

    def setup(self, preprocessor: Any, seed: int) -> None:
        """Load and preprocess every split (``preprocessor``: tokenizer or image transform)."""
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def collate(self, examples: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """Per-batch outputs (moved to CPU); :meth:`evaluate` turns a split's outputs into metrics."""
        raise NotImplementedError

    def evaluate(self, outputs: list[dict[str, Any]], split: str) -> dict[str, float]:
        raise NotImplementedError


def cat_outputs(outputs: list[dict[str, Any]], key: str) -> list[Any]:
    """Concatenate the per-batch lists/tensors under ``key`` into one flat list."""
    flat: list[Any] = []
    for out in outputs:
        value = out[key]
        flat.extend(value.tolist() if isinstance(value, torch.Tensor) else value)
    return flat
