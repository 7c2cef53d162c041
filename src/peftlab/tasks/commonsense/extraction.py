"""Answer extraction and scoring of LLM-Adapters' commonsense evaluation (``commonsense_evaluate.py``).

The model's generation is cut at a further ``### Response:`` (LLM-Adapters takes
``output.split("### Response:")[1]`` of the decoded prompt + generation; DoRA takes ``[-1]``), stripped,
and the FIRST match of the task's label regex is the prediction; no match predicts "" and counts as
wrong. Accuracy is the exact string match with the record's ``answer``; the reported average is the
unweighted mean of the per-task accuracies (the "Avg" column of LLM-Adapters/DoRA/SMT tables).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from peftlab.config_utils import require
from peftlab.tasks.commonsense.prompt import RESPONSE_MARKER

# label regex per answer family, verbatim from extract_answer (case-sensitive, as LLM-Adapters)
FAMILY_PATTERNS: dict[str, str] = {
    "true_false": r"true|false",
    "solution": r"solution1|solution2",
    "answer": r"answer1|answer2|answer3|answer4|answer5",
    "ending": r"ending1|ending2|ending3|ending4",
    "option": r"option1|option2",
}
# the eight evaluation sets (LLM-Adapters dataset directory names) → their answer family
DATASET_FAMILY: dict[str, str] = {
    "boolq": "true_false",
    "piqa": "solution",
    "social_i_qa": "answer",
    "hellaswag": "ending",
    "winogrande": "option",
    "ARC-Easy": "answer",
    "ARC-Challenge": "answer",
    "openbookqa": "answer",
}


def family_of_answer(answer: str) -> str:
    """The answer family a gold label belongs to (``"answer3"`` → ``"answer"``, ``"true"`` → ``"true_false"``).

    Used for sets with no fixed family (the mixed validation split held out of commonsense_170k).
    """
    for family, pattern in FAMILY_PATTERNS.items():
        if re.fullmatch(pattern, answer):
            return family
    raise ValueError(f"gold answer '{answer}' matches no label pattern {sorted(FAMILY_PATTERNS.values())}")


def response_text(generated: str) -> str:
    """The answer part of a generation: up to a repeated ``### Response:`` marker, stripped."""
    return generated.split(RESPONSE_MARKER)[0].strip()


def extract_answer(generated: str, family: str, lowercase: bool = False) -> str:
    """First match of ``family``'s label regex in the response of ``generated``; ``""`` when none.

    ``lowercase=True`` lower-cases the response first, as the SMT evaluation code does.
    """
    require(family in FAMILY_PATTERNS, f"unknown answer family '{family}'; valid: {sorted(FAMILY_PATTERNS)}")
    text = response_text(generated)
    if lowercase:
        text = text.lower()
    match = re.search(FAMILY_PATTERNS[family], text)
    return match.group(0) if match else ""


def accuracy_by_set(sets: Sequence[str], preds: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """``{"accuracy/<set>": %}`` per evaluation set and ``"avg_accuracy"``: the unweighted mean over sets."""
    require(len(sets) == len(preds) == len(answers), "sets, preds and answers must have the same length")
    require(len(sets) > 0, "no predictions to score")
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for name, pred, gold in zip(sets, preds, answers, strict=True):
        total[name] += 1
        correct[name] += int(pred == gold)
    per_set = {f"accuracy/{name}": 100.0 * correct[name] / total[name] for name in total}
    return {**per_set, "avg_accuracy": sum(per_set.values()) / len(per_set)}
