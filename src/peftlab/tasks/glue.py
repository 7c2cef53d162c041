"""GLUE sentence(-pair) classification and STS-B regression (Wang et al., 2019).

Data from ``nyu-mll/glue`` through ``datasets``; each task's official metric (MCC for CoLA,
F1/accuracy for MRPC and QQP, Pearson/Spearman for STS-B, accuracy otherwise) by scikit-learn/SciPy.
The reported split is the dev set (``validation``; MNLI: ``validation_matched`` and, as task
``mnli_mm``, ``validation_mismatched``), as the LoRA/AdaLoRA/CapaBoost papers report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from torch import nn

from peftlab import metrics
from peftlab.config_utils import PositiveInt, require
from peftlab.tasks import TASKS
from peftlab.tasks.base import SPLITS, Task, TaskConfig, cat_outputs
from peftlab.tasks.hub import load_hf_dataset

# Classes of each GLUE task (Wang et al., 2019, Table 1; STS-B is a regression: one output).
NUM_LABELS = {"cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2}


@dataclass
class GlueConfig(TaskConfig):
    dataset: str = "nyu-mll/glue"  # hub id or local path given to datasets.load_dataset
    subset: str | None = None  # GLUE config name (rte, mnli ...)
    text_fields: list[str] = field(default_factory=lambda: ["sentence1", "sentence2"])
    num_labels: PositiveInt = 2  # 1 = regression (STS-B)
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    main_metric: str = "accuracy"
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "validation"}
    )
    max_length: PositiveInt = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= len(self.text_fields) <= 2, f"task.text_fields needs 1 or 2 fields, got {self.text_fields}")
        require(self.main_metric in self.metrics, f"task.main_metric '{self.main_metric}' not in {self.metrics}")
        unknown = [m for m in self.metrics if m not in metrics.METRICS]
        require(not unknown, f"unknown metric(s) {unknown}; valid metrics: {sorted(metrics.METRICS)}")
        require(set(self.splits) == set(SPLITS), f"task.splits must map exactly {SPLITS}, got {sorted(self.splits)}")
        known = self.data_num_labels()
        require(known is None or known == self.num_labels,
                f"task.num_labels={self.num_labels} does not fit task '{self.name}', whose data have "
                f"{'one regression target' if known == 1 else f'{known} classes'}: set task.num_labels={known}")

    def data_num_labels(self) -> int | None:
        """The number of classes the data have, when known from the config (GLUE tasks by ``subset``)."""
        return NUM_LABELS.get(self.subset or "")


@TASKS.register("glue")
class GlueTask(Task):
    config_cls = GlueConfig

    @property
    def head(self) -> str:
        return "regression" if self.config.num_labels == 1 else "seq_cls"

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    def load_raw(self, split: str) -> datasets.Dataset:
        """The raw split (GLUE schema: text fields + ``label``)."""
        c = self.config
        return load_hf_dataset(c.dataset, c.subset, c.splits[split])

    def setup(self, preprocessor: Any, seed: int) -> None:
        self.tokenizer = preprocessor
        self._data: dict[str, datasets.Dataset] = {}
        for split in SPLITS:
            raw = self.load_raw(split)
            missing = [f for f in [*self.config.text_fields, "label"] if f not in raw.column_names]
            require(not missing, f"task '{self.name}' split '{split}' lacks column(s) {missing}")
            cap = self.config.max_train_samples if split == "train" else self.config.max_eval_samples
            if cap is not None and len(raw) > cap:
                raw = raw.shuffle(seed=seed).select(range(cap))
            self._check_labels(raw, split)
            self._data[split] = raw.map(self._tokenize, batched=True, remove_columns=raw.column_names)

    def _check_labels(self, raw: datasets.Dataset, split: str) -> None:
        labels = raw["label"]
        if self.config.num_labels > 1:
            bad = sorted({y for y in labels if not (0 <= y < self.config.num_labels)})
            require(not bad, f"task '{self.name}' split '{split}' has labels {bad[:5]} outside "
                    f"[0, {self.config.num_labels}) (GLUE test splits are unlabelled: -1)")

    def _tokenize(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [batch[f] for f in self.config.text_fields]
        enc = self.tokenizer(*texts, truncation=True, max_length=self.config.max_length)
        enc["labels"] = batch["label"]
        return enc

    def dataset(self, split: str) -> datasets.Dataset:
        return self._data[split]

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.tokenizer.pad(examples, return_tensors="pt")
        if self.head == "regression":
            batch["labels"] = batch["labels"].float()
        return dict(batch)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(**batch).loss

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        logits = model(**batch).logits.float()
        preds = logits.squeeze(-1) if self.head == "regression" else logits.argmax(-1)
        return {"preds": preds.cpu(), "refs": batch["labels"].cpu()}

    def evaluate(self, outputs: list[dict[str, Any]], split: str) -> dict[str, float]:
        return metrics.compute(self.config.metrics, cat_outputs(outputs, "preds"), cat_outputs(outputs, "refs"))
