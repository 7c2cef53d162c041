"""The commonsense task family: train a causal LM on commonsense_170k, evaluate by generation on 8 sets.

Protocol (LLM-Adapters ``finetune.py`` / ``commonsense_evaluate.py``; SMT and DoRA report it; details
in docs/commonsense.md):

- training text = the Alpaca training template + "the correct answer is <label>" + EOS, truncated to
  ``cutoff_len`` (256 in LLM-Adapters/DoRA, 2048 in the SMT code); loss on the response only
  (``train_on_inputs: false``, the SMT code) or on the whole sequence (``true``, LLM-Adapters/DoRA);
- validation = ``val_set_size`` records held out of the training file (120 with seed 42 in the DoRA
  scripts), scored like the test sets;
- test = one JSON file per evaluation set; prompts left-padded and generated in batches
  (greedy by default; LLM-Adapters/DoRA use 4 beams and 32 new tokens, SMT 4 beams, 256 tokens and
  repetition penalty 1.1: set ``generation``); the prediction is the first match of the set's label
  regex; metrics are the per-set accuracy and their unweighted mean ``avg_accuracy``.

Departures: training batches are right-padded (LLM-Adapters pads on the left, which shifts LLaMA's
positions by the padding length; right padding gives each example the positions it has when
generated). Evaluation prompts are left-padded as in LLM-Adapters; ``generate`` derives positions
from the attention mask, so a batched generation equals the unbatched one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftlab.config_utils import NonNegativeInt, PositiveInt, Seed, require
from peftlab.tasks import TASKS
from peftlab.tasks.base import Task, TaskConfig, cat_outputs
from peftlab.tasks.commonsense import data, synthetic
from peftlab.tasks.commonsense.extraction import (
    DATASET_FAMILY,
    accuracy_by_set,
    extract_answer,
    family_of_answer,
)
from peftlab.tasks.commonsense.prompt import IGNORE_INDEX, encode_for_generation, encode_for_training

EVAL_SETS = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa"]
VALIDATION_SET = "validation"
MAIN_METRIC = "avg_accuracy"


@dataclass
class CommonsenseConfig(TaskConfig):
    train_file: str = "data/commonsense/commonsense_170k.json"  # JSON list, or a hub dataset id
    eval_dir: str = "data/commonsense/dataset"  # holds <set>/test.json (LLM-Adapters' dataset/ layout)
    eval_sets: list[str] = field(default_factory=lambda: list(EVAL_SETS))
    val_set_size: NonNegativeInt = 120  # held out of the training file for validation (0 = validate on nothing)
    val_seed: Seed = 42  # LLM-Adapters' train_test_split seed
    cutoff_len: PositiveInt = 256
    train_on_inputs: bool = False  # False: loss on the response only (SMT code); True: LLM-Adapters/DoRA
    add_eos: bool = True
    lowercase_output: bool = False  # SMT lower-cases generations before matching; LLM-Adapters does not
    generation: dict[str, Any] = field(default_factory=lambda: {"num_beams": 1, "max_new_tokens": 32})
    main_metric: str = MAIN_METRIC  # the tables' "Avg" column (conf/config.yaml's objective reads it)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.main_metric == MAIN_METRIC, f"task.main_metric must be '{MAIN_METRIC}', got '{self.main_metric}'")
        require(len(self.eval_sets) > 0, "task.eval_sets is empty: name at least one evaluation set")
        require(len(set(self.eval_sets)) == len(self.eval_sets), f"task.eval_sets has duplicates: {self.eval_sets}")
        require(VALIDATION_SET not in self.eval_sets, f"'{VALIDATION_SET}' is reserved, not an evaluation set")
        beams, new = self.generation.get("num_beams", 1), self.generation.get("max_new_tokens", 32)
        require(isinstance(beams, int) and beams >= 1, f"task.generation.num_beams must be >= 1, got {beams}")
        require(isinstance(new, int) and new >= 1, f"task.generation.max_new_tokens must be >= 1, got {new}")
        require(not self.generation.get("do_sample", False),
                "task.generation.do_sample must be false: the protocol decodes deterministically")


@TASKS.register("commonsense")
class CommonsenseTask(Task):
    config_cls = CommonsenseConfig

    @property
    def head(self) -> str:
        return "causal_lm"

    # ---- data ----
    def train_records(self, seed: int) -> list[dict[str, str]]:
        return data.load_records(self.config.train_file)

    def eval_records(self, name: str) -> list[dict[str, str]]:
        return data.load_records(data.eval_file(self.config.eval_dir, name))

    def setup(self, preprocessor: Any, seed: int) -> None:
        c = self.config
        self.tokenizer = preprocessor
        if self.tokenizer.pad_token_id is None:  # LLaMA tokenizers have none; LLM-Adapters pads with id 0 (<unk>)
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        require(self.tokenizer.eos_token_id is not None, "the tokenizer has no EOS token")
        records = self.train_records(seed)
        require(len(records) > c.val_set_size, f"task.val_set_size={c.val_set_size} leaves no training records "
                f"(the training file has {len(records)})")
        order = list(range(len(records)))
        random.Random(c.val_seed).shuffle(order)
        val = [records[i] for i in order[:c.val_set_size]]
        train = [records[i] for i in order[c.val_set_size:]]
        if c.max_train_samples is not None:
            train = train[:c.max_train_samples]
        self._data: dict[str, list[dict[str, Any]]] = {
            "train": [encode_for_training(self.tokenizer, r, c.cutoff_len, c.train_on_inputs, c.add_eos)
                      for r in train],
            "validation": self._eval_examples(VALIDATION_SET, val),
            "test": [ex for name in c.eval_sets for ex in self._eval_examples(name, self.eval_records(name))],
        }

    def _eval_examples(self, name: str, records: list[dict[str, str]]) -> list[dict[str, Any]]:
        if self.config.max_eval_samples is not None:
            records = records[:self.config.max_eval_samples]
        out = []
        for r in records:
            family = DATASET_FAMILY.get(name) or family_of_answer(r["answer"])
            out.append({"prompt_ids": encode_for_generation(self.tokenizer, r), "answer": r["answer"],
                        "family": family, "set": name})
        return out

    def dataset(self, split: str) -> list[dict[str, Any]]:
        return self._data[split]

    # ---- batching ----
    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        if "labels" in examples[0]:  # training: right padding, padded labels ignored
            width = max(len(e["input_ids"]) for e in examples)
            return {
                "input_ids": _pad([e["input_ids"] for e in examples], width, pad, left=False),
                "attention_mask": _pad([e["attention_mask"] for e in examples], width, 0, left=False),
                "labels": _pad([e["labels"] for e in examples], width, IGNORE_INDEX, left=False),
            }
        width = max(len(e["prompt_ids"]) for e in examples)  # generation: left padding
        ids = [e["prompt_ids"] for e in examples]
        return {
            "input_ids": _pad(ids, width, pad, left=True),
            "attention_mask": _pad([[1] * len(i) for i in ids], width, 0, left=True),
            "answers": [e["answer"] for e in examples],
            "families": [e["family"] for e in examples],
            "sets": [e["set"] for e in examples],
        }

    # ---- training and evaluation ----
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    @torch.no_grad()
    def generate(self, model: nn.Module, batch: dict[str, Any]) -> list[str]:
        """Decoded continuations (new tokens only, special tokens dropped) of a left-padded batch."""
        tok = self.tokenizer
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, do_sample=False,
                             **self.config.generation)
        return tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        texts = self.generate(model, batch)
        preds = [extract_answer(t, f, self.config.lowercase_output) for t, f in zip(texts, batch["families"],
                                                                                    strict=True)]
        return {"preds": preds, "answers": batch["answers"], "sets": batch["sets"], "generations": texts}

    def evaluate(self, outputs: list[dict[str, Any]], split: str) -> dict[str, float]:
        return accuracy_by_set(cat_outputs(outputs, "sets"), cat_outputs(outputs, "preds"),
                               cat_outputs(outputs, "answers"))


def _pad(rows: list[list[int]], width: int, value: int, left: bool) -> torch.Tensor:
    padded = [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


@dataclass
class SyntheticCommonsenseConfig(CommonsenseConfig):
    train_file: str = "generated"
    eval_dir: str = "generated"
    eval_sets: list[str] = field(default_factory=lambda: list(synthetic.SETS))
    num_train: PositiveInt = 2000
    num_eval: PositiveInt = 100  # per evaluation set
    data_seed: Seed = 1234

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [s for s in self.eval_sets if s not in synthetic.SETS]
        require(not unknown, f"unknown synthetic evaluation set(s) {unknown}; valid: {list(synthetic.SETS)}")


@TASKS.register("commonsense_synthetic")
class SyntheticCommonsenseTask(CommonsenseTask):
    """The same task on generated records (see :mod:`peftlab.tasks.commonsense.synthetic`): offline tests."""

    config_cls = SyntheticCommonsenseConfig

    def train_records(self, seed: int) -> list[dict[str, str]]:
        return synthetic.make_train(self.config.num_train, self.config.data_seed)

    def eval_records(self, name: str) -> list[dict[str, str]]:
        return synthetic.make_eval(name, self.config.num_eval, self.config.data_seed + 1)
