"""SQuAD v1.1 (Rajpurkar et al., 2016) and v2.0 (Rajpurkar et al., 2018) extractive QA.

Data from ``rajpurkar/squad`` / ``rajpurkar/squad_v2`` through ``datasets``; train on ``train``, report
on ``validation`` (the dev set, as AdaLoRA/CapaBoost report). Windows and labels:
:mod:`.preprocess`; answers from logits: :mod:`.postprocess`; official metrics: :mod:`.metrics`.
``predict`` returns each window's start/end logits with its index; ``evaluate`` post-processes a whole
split. Task family ``squad_synthetic`` runs the same pipeline on generated data (:mod:`.synthetic`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from peftlab.config_utils import Dropout, NonNegativeInt, PositiveInt, require
from peftlab.tasks import TASKS
from peftlab.tasks.base import SPLITS, GeneratedDataConfig, Task, TaskConfig
from peftlab.tasks.hub import load_hf_dataset
from peftlab.tasks.squad import metrics
from peftlab.tasks.squad.postprocess import postprocess
from peftlab.tasks.squad.preprocess import check_tokenizer, eval_features, train_features
from peftlab.tasks.squad.synthetic import make_squad_dataset

COLUMNS = ("id", "context", "question", "answers")
WINDOW_META = ("example_index", "cls_index", "offset_mapping")  # kept for post-processing, not fed to the model
LABELS = ("start_positions", "end_positions", "feature_index")


@dataclass
class SquadConfig(TaskConfig):
    dataset: str = "rajpurkar/squad"  # hub id or local path given to datasets.load_dataset
    subset: str | None = None
    version_2_with_negative: bool = False  # SQuAD 2.0: unanswerable questions, null-score answers
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "validation"}
    )
    max_seq_length: PositiveInt = 384  # tokens per window (question + context + special tokens)
    doc_stride: NonNegativeInt = 128  # tokens shared by consecutive windows of one context
    n_best_size: PositiveInt = 20  # top start/end logits considered per window
    max_answer_length: PositiveInt = 30  # longest answer, in tokens
    null_score_diff_threshold: float = 0.0  # v2: answer "" when null − best span score exceeds this
    main_metric: str = "f1"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(set(self.splits) == set(SPLITS), f"task.splits must map exactly {SPLITS}, got {sorted(self.splits)}")
        require(self.doc_stride < self.max_seq_length,
                f"task.doc_stride must be in [0, max_seq_length={self.max_seq_length}), got {self.doc_stride}")
        valid = ["exact_match", "f1"] + (["best_exact", "best_f1", "HasAns_f1", "NoAns_f1"]
                                         if self.version_2_with_negative else [])
        require(self.main_metric in valid, f"task.main_metric must be one of {valid}, got '{self.main_metric}'")


@TASKS.register("squad")
class SquadTask(Task):
    config_cls = SquadConfig

    @property
    def head(self) -> str:
        return "qa_span"

    def load_raw(self, split: str) -> datasets.Dataset:
        """The raw split in the SQuAD schema (id, title, context, question, answers{text, answer_start})."""
        c = self.config
        return load_hf_dataset(c.dataset, c.subset, c.splits[split])

    def setup(self, preprocessor: Any, seed: int) -> None:
        c = self.config
        check_tokenizer(preprocessor, c.max_seq_length, c.doc_stride)
        self.tokenizer = preprocessor
        self._examples: dict[str, datasets.Dataset] = {}
        self._windows: dict[str, datasets.Dataset] = {}
        self._meta: dict[str, list[dict[str, Any]]] = {}
        kwargs = {"tokenizer": preprocessor, "max_seq_length": c.max_seq_length, "doc_stride": c.doc_stride}
        for split in SPLITS:
            if split == "test" and c.splits["test"] == c.splits["validation"]:  # the dev set: window it once
                for store in (self._examples, self._windows, self._meta):
                    store["test"] = store["validation"]
                continue
            raw = self._examples[split] = self._checked_raw(split, seed)
            if split == "train":
                self._windows[split] = raw.map(train_features, batched=True, remove_columns=raw.column_names,
                                               fn_kwargs=kwargs)
                continue
            windows = raw.map(eval_features, batched=True, with_indices=True, remove_columns=raw.column_names,
                              fn_kwargs=kwargs)
            self._meta[split] = windows.select_columns(list(WINDOW_META)).to_list()
            windows = windows.remove_columns(list(WINDOW_META))
            self._windows[split] = windows.add_column("feature_index", list(range(len(windows))))

    def _checked_raw(self, split: str, seed: int) -> datasets.Dataset:
        raw = self.load_raw(split)
        missing = [col for col in COLUMNS if col not in raw.column_names]
        require(not missing, f"task '{self.name}' split '{split}' lacks SQuAD column(s) {missing}")
        cap = self.config.max_train_samples if split == "train" else self.config.max_eval_samples
        if cap is not None and len(raw) > cap:
            raw = raw.shuffle(seed=seed).select(range(cap))
        if not self.config.version_2_with_negative:
            unanswerable = sum(not a["answer_start"] for a in raw["answers"])
            require(unanswerable == 0, f"task '{self.name}' split '{split}' has {unanswerable} unanswerable "
                    "question(s); set task.version_2_with_negative=true (SQuAD 2.0)")
        return raw

    def dataset(self, split: str) -> datasets.Dataset:
        return self._windows[split]

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        extra = {k: torch.tensor([e.pop(k) for e in examples]) for k in LABELS if k in examples[0]}
        batch = dict(self.tokenizer.pad(examples, return_tensors="pt"))
        return {**batch, **extra}

    @staticmethod
    def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k != "feature_index"}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        # HF QA heads: mean of the start and end cross-entropies (positions outside the window are ignored)
        return model(**self._model_inputs(batch)).loss

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        out = model(**self._model_inputs(batch))
        mask = batch["attention_mask"].bool()  # padding removed: logits align with the window's offsets
        return {
            "feature_index": batch["feature_index"].cpu(),
            "start_logits": [row[m].float().cpu() for row, m in zip(out.start_logits, mask, strict=True)],
            "end_logits": [row[m].float().cpu() for row, m in zip(out.end_logits, mask, strict=True)],
        }

    def answers(self, outputs: list[dict[str, Any]], split: str) -> tuple[dict[str, str], dict[str, float]]:
        """(id → predicted answer, id → null odds) for a split's ``predict`` outputs."""
        meta = self._meta[split]
        starts: list[np.ndarray | None] = [None] * len(meta)
        ends: list[np.ndarray | None] = [None] * len(meta)
        for out in outputs:
            for i, s, e in zip(out["feature_index"].tolist(), out["start_logits"], out["end_logits"], strict=True):
                starts[i], ends[i] = s.numpy(), e.numpy()
        lost = sum(s is None for s in starts)
        if lost:
            raise RuntimeError(f"{lost} of {len(meta)} windows of split '{split}' have no prediction")
        c = self.config
        return postprocess(self._examples[split], meta, starts, ends,
                           version_2_with_negative=c.version_2_with_negative, n_best_size=c.n_best_size,
                           max_answer_length=c.max_answer_length,
                           null_score_diff_threshold=c.null_score_diff_threshold)

    def evaluate(self, outputs: list[dict[str, Any]], split: str) -> dict[str, float]:
        predictions, null_odds = self.answers(outputs, split)
        examples = self._examples[split]
        references = {qid: a["text"] for qid, a in zip(examples["id"], examples["answers"], strict=True)}
        if self.config.version_2_with_negative:
            return metrics.squad_v2(predictions, references, na_probs=null_odds)
        return metrics.squad_v1(predictions, references)


@dataclass
class SyntheticSquadConfig(GeneratedDataConfig, SquadConfig):
    dataset: str = "generated"
    num_train: PositiveInt = 400
    num_validation: PositiveInt = 100
    unanswerable_ratio: Dropout = 0.0  # fraction of unanswerable questions (needs version_2_with_negative)
    min_facts: PositiveInt = 2  # facts per context: more facts → longer contexts → more windows
    max_facts: int = 10
    max_fillers: NonNegativeInt = 4  # filler sentences per context
    max_seq_length: PositiveInt = 64  # CPU-sized windows; contexts still need several
    doc_stride: NonNegativeInt = 24

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.unanswerable_ratio == 0.0 or self.version_2_with_negative,
                "task.unanswerable_ratio > 0 needs task.version_2_with_negative=true")
        require(self.min_facts <= self.max_facts <= 40,
                f"need 1 <= task.min_facts <= task.max_facts <= 40, got {self.min_facts}, {self.max_facts}")


@TASKS.register("squad_synthetic")
class SyntheticSquadTask(SquadTask):
    config_cls = SyntheticSquadConfig

    def load_raw(self, split: str) -> datasets.Dataset:
        c = self.config
        kwargs = {"unanswerable_ratio": c.unanswerable_ratio, "min_facts": c.min_facts, "max_facts": c.max_facts,
                  "max_fillers": c.max_fillers}
        if split == "train":
            return make_squad_dataset(c.num_train, c.data_seed, split="train", **kwargs)
        # validation and test: one held-out set (disjoint seed), several gold answers per question like SQuAD dev
        return make_squad_dataset(c.num_validation, c.data_seed + 1, split="dev", multi_gold=True, **kwargs)


__all__ = ["SquadConfig", "SquadTask", "SyntheticSquadConfig", "SyntheticSquadTask"]
