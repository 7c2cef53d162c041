"""SQuAD metrics against hand-computed values of the official scripts (``evaluate-v1.1.py``, ``evaluate-v2.0.py``;
``huggingface/evaluate`` ``metrics/squad*/compute_score.py``), their edge cases, and torchmetrics' SQuAD (an
independent implementation that agrees with both wherever neither side normalises to "")."""

from __future__ import annotations

import math

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
    for f1 in (m.f1_v1, m.f1_v2):
        assert f1("Denver Broncos", "Broncos") == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P=1, R=1/2
        assert f1("in 1874", "1874 and 1875") == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
        assert f1("x x y", "x y y") == pytest.approx(2 / 3)  # Counter intersection: one x, one y
        assert f1("x y", "z") == 0.0
    assert m.f1_v2("", "") == 1.0 and m.f1_v2("", "something") == 0.0 and m.f1_v2("the", "") == 1.0


# (gold, prediction, EM, v1.1 F1, v2.0 F1): where the two official scripts part, and normalisation corners
EDGE_CASES = [
    ("the", "a", 1, 0.0, 1.0),  # articles only: both normalise to "" (v1.1: num_same == 0 → F1 0)
    ("...", "!", 1, 0.0, 1.0),  # punctuation only
    ("An", "", 1, 0.0, 1.0),  # empty prediction against an article
    ("The", "the cat", 0, 0.0, 0.0),  # only the gold is empty
    ("Paris", "", 0, 0.0, 0.0),  # only the prediction is empty
    ("Paris—France", "Paris France", 0, 0.0, 0.0),  # an em dash is not in string.punctuation: one token
    ("a.m.", "am", 1, 1.0, 1.0),  # punctuation goes before articles are matched
    ("The, end", "end", 1, 1.0, 1.0),  # "the," loses its comma, then is an article
    ("  Denver   BRONCOS ", "denver broncos", 1, 1.0, 1.0),  # case and whitespace
]


@pytest.mark.parametrize(("gold", "pred", "em", "f1_v1", "f1_v2"), EDGE_CASES)
def test_official_edge_cases(gold: str, pred: str, em: int, f1_v1: float, f1_v2: float) -> None:
    assert m.exact_score(gold, pred) == em
    assert m.f1_v1(gold, pred) == f1_v1
    assert m.f1_v2(gold, pred) == f1_v2


def test_squad_v1_f1_is_zero_when_both_sides_normalise_to_empty() -> None:
    # evaluate-v1.1.py f1_score returns 0 when num_same == 0; torchmetrics (v2.0 rule) says 100 here
    out = m.squad_v1({"q": "a"}, {"q": ["the"]})
    assert out == {"exact_match": 100.0, "f1": 0.0}


def test_squad_v1_takes_em_and_f1_maxima_over_all_golds_separately() -> None:
    refs = {"a": ["the", "Denver Broncos"], "b": ["x y", "An"], "c": ["the Eiffel Tower", "Eiffel"]}
    preds = {"a": "Broncos", "b": "an", "c": "eiffel tower!"}
    out = m.squad_v1(preds, refs)
    # a: EM 0, F1 2/3 (from the second gold); b: EM 1 (from "An"), F1 0; c: EM 1, F1 1. v1.1 keeps every gold.
    assert out["exact_match"] == pytest.approx(100 * 2 / 3)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)


def _target(gold: str) -> dict:
    return {"id": "q", "answers": {"text": [gold], "answer_start": [0]}}


@pytest.mark.parametrize(("gold", "pred"), PAIRS)
def test_pairwise_scores_equal_torchmetrics(gold: str, pred: str) -> None:
    out = tm_squad([{"id": "q", "prediction_text": pred}], [_target(gold)])
    assert 100 * m.exact_score(gold, pred) == pytest.approx(out["exact_match"].item())
    assert 100 * m.f1_v1(gold, pred) == pytest.approx(out["f1"].item(), abs=1e-4)  # torchmetrics in float32
    assert m.f1_v1(gold, pred) == m.f1_v2(gold, pred)  # the rules part only where a side normalises to ""


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


def test_squad_v2_no_answer_golds_and_empty_predictions() -> None:
    # v2.0 drops golds that normalise to "": ["the", "Paris"] is answerable (only "Paris"), ["An"] is not
    refs = {"h": ["the", "Paris"], "n_abstain": [], "n_answer": [], "n_article": ["An"], "h_empty": ["Rome"]}
    preds = {"h": "", "n_abstain": "", "n_answer": "London", "n_article": "", "h_empty": ""}
    out = m.squad_v2(preds, refs)
    assert out["HasAns_total"] == 2 and out["NoAns_total"] == 3
    assert out["HasAns_exact"] == out["HasAns_f1"] == 0.0  # an empty prediction never matches a real answer
    assert out["NoAns_exact"] == out["NoAns_f1"] == pytest.approx(100 * 2 / 3)  # n_abstain, n_article
    assert out["exact_match"] == out["f1"] == pytest.approx(100 * 2 / 5)


def test_squad_v2_threshold_cuts_no_answer_scores_above_it() -> None:
    # null-score differences, not probabilities: 3.0 > the official default cut 1.0 turns a right answer into ""
    refs, preds, na = {"h": ["Paris"], "n": []}, {"h": "Paris", "n": ""}, {"h": 3.0, "n": 8.0}
    assert m.squad_v2(preds, refs, na_probs=na)["exact_match"] == 50.0  # official cut at 1.0: h scored as ""
    exact = m.squad_v2(preds, refs, na_probs=na, na_prob_thresh=math.inf)
    assert exact["exact_match"] == exact["f1"] == 100.0  # no cut: the predictions as made
    assert exact["best_exact"] == 100.0 and exact["best_exact_thresh"] == 3.0  # best_* still over na_probs


def test_best_threshold_stays_at_zero_when_abstaining_everywhere_is_best() -> None:
    refs, preds = {"n1": [], "n2": []}, {"n1": "London", "n2": "Rome"}
    out = m.squad_v2(preds, refs, na_probs={"n1": -2.0, "n2": 0.5})
    assert out["exact_match"] == 0.0
    assert out["best_exact"] == 100.0 and out["best_exact_thresh"] == 0.0 and out["best_f1_thresh"] == 0.0


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
