"""SQuAD metrics: our v2.0 implementation against hand-computed values, the official definitions
(evaluate-v2.0.py and huggingface/evaluate metrics/squad) and torchmetrics' SQuAD (the v1.1 definition)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.text import squad as tm_squad

from peftlab.tasks.squad import metrics as m

PAIRS = [  # (gold, prediction)
    ("the Eiffel Tower", "eiffel tower"),
    ("Denver Broncos", "the Denver Broncos!"),
    ("Denver Broncos", "Broncos"),
    ("in 1874", "1874 and 1875"),
    ("Santa Clara, California", "Levi's Stadium"),
    ("a a b", "a b b"),
    ("An apple", "an apple a day"),
    ("1,000 km", "1000 km"),
]


def test_normalize_answer_follows_official_order() -> None:
    assert m.normalize_answer("  The  Quick, brown FOX!  ") == "quick brown fox"
    assert m.normalize_answer("an Apple a day") == "apple day"
    assert m.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert m.normalize_answer("the") == ""


def test_hand_computed_f1_and_exact() -> None:
    assert m.exact_score("the Eiffel Tower", "Eiffel tower.") == 1
    assert m.f1_score("Denver Broncos", "Broncos") == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P=1, R=1/2
    assert m.f1_score("in 1874", "1874 and 1875") == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert m.f1_score("x y", "z") == 0.0
    assert m.f1_score("", "") == 1.0 and m.f1_score("", "something") == 0.0 and m.f1_score("the", "") == 1.0


def _target(gold: str) -> dict:
    return {"id": "q", "answers": {"text": [gold], "answer_start": [0]}}


@pytest.mark.parametrize(("gold", "pred"), PAIRS)
def test_pairwise_scores_equal_torchmetrics(gold: str, pred: str) -> None:
    out = tm_squad([{"id": "q", "prediction_text": pred}], [_target(gold)])
    assert 100 * m.exact_score(gold, pred) == pytest.approx(out["exact_match"].item())
    assert 100 * m.f1_score(gold, pred) == pytest.approx(out["f1"].item(), abs=1e-4)  # torchmetrics in float32


def test_squad_v1_is_max_over_golds_and_mean() -> None:
    refs = {"a": ["Denver Broncos", "Broncos"], "b": ["in 1874"], "c": ["Paris"]}
    preds = {"a": "Broncos", "b": "1874 and 1875", "c": "London"}
    out = m.squad_v1(preds, refs)
    f1_b = 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5)
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + f1_b + 0) / 3, abs=1e-3)


def test_squad_v2_hand_computed_report() -> None:
    # 3 answerable (one exact, one partial, one abstained), 2 unanswerable (one abstained, one answered)
    refs = {"h1": ["Broncos", "Denver Broncos"], "h2": ["in 1874"], "h3": ["Paris"], "n1": [], "n2": []}
    preds = {"h1": "Denver Broncos", "h2": "1874 and 1875", "h3": "", "n1": "", "n2": "London"}
    f1_h2 = 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5)
    out = m.squad_v2(preds, refs)
    assert out["total"] == 5 and out["HasAns_total"] == 3 and out["NoAns_total"] == 2
    assert out["exact_match"] == pytest.approx(100 * 2 / 5)  # h1, n1
    assert out["f1"] == pytest.approx(100 * (1 + f1_h2 + 0 + 1 + 0) / 5)
    assert out["HasAns_exact"] == pytest.approx(100 / 3)
    assert out["HasAns_f1"] == pytest.approx(100 * (1 + f1_h2) / 3)
    assert out["NoAns_exact"] == out["NoAns_f1"] == pytest.approx(50.0)


def test_squad_v2_equals_torchmetrics_on_answerable_questions() -> None:
    refs = {str(i): [gold] for i, (gold, _) in enumerate(PAIRS)}
    preds = {str(i): pred for i, (_, pred) in enumerate(PAIRS)}
    ours = m.squad_v2(preds, refs)
    theirs = m.squad_v1(preds, refs)
    assert ours["exact_match"] == pytest.approx(theirs["exact_match"], abs=1e-4)
    assert ours["f1"] == pytest.approx(theirs["f1"], abs=1e-4)


def test_gold_answers_drop_empty_normalisations() -> None:
    assert m.gold_answers(["the", "Paris"]) == ["Paris"]
    assert m.gold_answers(["a", ""]) == [""] and m.gold_answers([]) == [""]


def test_best_threshold_search_official_definition() -> None:
    # na_probs ranks h1 < n2 < h2 < n1. Walk: start 2 (both NoAns abstain) → +1 (h1) = 3 → −1 (n2 answered) = 2
    # → +0.5 (h2) = 2.5 → 0 (n1 empty) = 2.5. Best 3 of 4 at threshold na_prob(h1).
    refs = {"h1": ["Paris"], "h2": ["red car"], "n1": [], "n2": []}
    preds = {"h1": "Paris", "h2": "car", "n1": "", "n2": "London"}
    na = {"h1": -3.0, "n2": -1.0, "h2": 0.5, "n1": 2.0}
    out = m.squad_v2(preds, refs, na_probs=na)
    assert out["best_exact"] == pytest.approx(75.0) and out["best_exact_thresh"] == -3.0
    assert out["best_f1"] == pytest.approx(75.0) and out["best_f1_thresh"] == -3.0
    # na_prob_thresh: questions whose na_prob exceeds it count as abstentions
    thresh = m.squad_v2(preds, refs, na_probs=na, na_prob_thresh=0.0)
    assert thresh["exact_match"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)  # h2 → 0, n1 → 1


def test_missing_prediction_is_an_error() -> None:
    with pytest.raises(KeyError, match="no prediction"):
        m.squad_v2({}, {"a": ["x"]})
    with pytest.raises(KeyError, match="no prediction"):
        m.squad_v1({}, {"a": ["x"]})


def test_torchmetrics_returns_percent() -> None:
    out = tm_squad([{"id": "q", "prediction_text": "x"}], [_target("x")])
    assert torch.isclose(out["exact_match"], torch.tensor(100.0))
