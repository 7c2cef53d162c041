"""Answer extraction and accuracy aggregation of the commonsense evaluation, on hand-written generations."""

from __future__ import annotations

import pytest

from peftlab.errors import ConfigError
from peftlab.tasks.commonsense.extraction import (
    DATASET_FAMILY,
    accuracy_by_set,
    extract_answer,
    family_of_answer,
)


@pytest.mark.parametrize(
    ("generation", "family", "expected"),
    [
        ("the correct answer is true", "true_false", "true"),
        ("false. It is true that ...", "true_false", "false"),  # first match wins
        ("the correct answer is solution2", "solution", "solution2"),
        ("solution3 is not a label; solution1", "solution", "solution1"),
        ("the correct answer is answer3", "answer", "answer3"),
        ("the correct answer is answer5", "answer", "answer5"),
        ("the correct answer is ending4", "ending", "ending4"),
        ("ending1 or ending2", "ending", "ending1"),
        ("the correct answer is option2", "option", "option2"),
        ("the correct answer is option1 ### Response: option2", "option", "option1"),
        # no match -> "" (scored wrong)
        ("I do not know", "true_false", ""),
        ("the correct answer is Solution1", "solution", ""),  # case-sensitive, as LLM-Adapters
        ("the correct answer is answer6", "answer", ""),
        ("", "ending", ""),
        ("### Response: option1", "option", ""),  # only the text before a repeated marker counts
    ],
)
def test_extract_answer(generation: str, family: str, expected: str) -> None:
    assert extract_answer(generation, family) == expected


def test_lowercase_option_as_smt() -> None:
    assert extract_answer("The correct answer is TRUE", "true_false", lowercase=True) == "true"
    assert extract_answer("The correct answer is TRUE", "true_false") == ""


def test_every_eval_set_has_a_family() -> None:
    assert DATASET_FAMILY == {
        "boolq": "true_false", "piqa": "solution", "social_i_qa": "answer", "hellaswag": "ending",
        "winogrande": "option", "ARC-Easy": "answer", "ARC-Challenge": "answer", "openbookqa": "answer",
    }


@pytest.mark.parametrize(
    ("answer", "family"),
    [("true", "true_false"), ("false", "true_false"), ("solution1", "solution"), ("answer4", "answer"),
     ("ending3", "ending"), ("option2", "option")],
)
def test_family_of_answer(answer: str, family: str) -> None:
    assert family_of_answer(answer) == family


def test_family_of_unknown_answer_fails() -> None:
    with pytest.raises(ValueError, match="matches no label pattern"):
        family_of_answer("maybe")


def test_unknown_family_fails() -> None:
    with pytest.raises(ConfigError, match="unknown answer family"):
        extract_answer("true", "yes_no")


def test_accuracy_by_set_is_unweighted_mean_of_sets() -> None:
    sets = ["boolq"] * 4 + ["piqa"] * 2
    preds = ["true", "false", "", "true", "solution1", "solution1"]
    golds = ["true", "false", "true", "false", "solution1", "solution2"]
    result = accuracy_by_set(sets, preds, golds)
    assert result["accuracy/boolq"] == pytest.approx(50.0)
    assert result["accuracy/piqa"] == pytest.approx(50.0)
    assert result["avg_accuracy"] == pytest.approx(50.0)
    # the pooled accuracy (3/6) would also be 50: a case where they differ
    result = accuracy_by_set(["a", "a", "a", "b"], ["x", "x", "x", "y"], ["x", "x", "x", "z"])
    assert result["accuracy/a"] == 100.0 and result["accuracy/b"] == 0.0
    assert result["avg_accuracy"] == pytest.approx(50.0)  # pooled would be 75


def test_accuracy_by_set_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        accuracy_by_set(["a"], ["x", "y"], ["x"])
    with pytest.raises(ConfigError):
        accuracy_by_set([], [], [])
