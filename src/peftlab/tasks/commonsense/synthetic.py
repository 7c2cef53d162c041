"""A SYNTHETIC commonsense-style task in the exact ``commonsense_170k`` schema, for offline tests and demos.

Not a benchmark. One hidden rule (which of 24 words, 8 each of fruit, animal and tool, name an animal)
is asked in four of the LLM-Adapters answer formats, so every piece of the real pipeline (template,
label masking, generation, answer extraction, per-set accuracy and average) runs on it:

- ``syn_boolq`` (true/false): "is the <word> an animal?";
- ``syn_piqa`` (solution1/solution2) and ``syn_winogrande`` (option1/option2): which of two words is an
  animal; exactly one is;
- ``syn_arc`` (answer1..answer3): which of three words is an animal; exactly one is.

The question always asks for the animal: a rule a 2-layer random-init model learns in a few hundred
CPU steps (asking for a category named in the question needs many more steps to bind the two).
Evaluation records are drawn independently of the training ones: the 48 distinct ``syn_boolq``
questions recur, while most multiple-choice combinations (word, distractors, order) are unseen.

Chance is 50% on the first three sets and 33.3% on the last (46.7% on average); a model that learned
the categories scores 100%. The data depend only on ``seed``.
"""

from __future__ import annotations

import random

CATEGORIES: dict[str, list[str]] = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"],
    "animal": ["horse", "tiger", "rabbit", "eagle", "whale", "sheep", "mouse", "snake"],
    "tool": ["hammer", "saw", "drill", "wrench", "shovel", "chisel", "pliers", "rake"],
}
SETS = ("syn_boolq", "syn_piqa", "syn_winogrande", "syn_arc")
ASKED = "animal"  # the category every question asks for
CHANCE = {"syn_boolq": 50.0, "syn_piqa": 50.0, "syn_winogrande": 50.0, "syn_arc": 100.0 / 3}


def _choices(rng: random.Random, category: str, n: int) -> tuple[list[str], int]:
    """``n`` words of which exactly one is in ``category``, and its index."""
    right = rng.choice(CATEGORIES[category])
    others = [w for c, words in CATEGORIES.items() if c != category for w in words]
    words = rng.sample(others, n - 1)
    gold = rng.randrange(n)
    words.insert(gold, right)
    return words, gold


def _record(instruction: str, answer: str) -> dict[str, str]:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def make_record(kind: str, rng: random.Random) -> dict[str, str]:
    """One record of set ``kind`` (one of :data:`SETS`), worded like its LLM-Adapters counterpart."""
    category = ASKED
    if kind == "syn_boolq":
        truth = rng.random() < 0.5
        pool = CATEGORIES[category] if truth else [w for c, ws in CATEGORIES.items() if c != category for w in ws]
        return _record(f"Please answer the following question with true or false, question: is the "
                       f"{rng.choice(pool)} an {category}?\n\nAnswer format: true/false", str(truth).lower())
    if kind == "syn_piqa":
        (a, b), gold = _choices(rng, category, 2)
        return _record(f"Please choose the correct solution to the question: which one is an {category}?\n\n"
                       f"Solution1: {a}\n\nSolution2: {b}\n\nAnswer format: solution1/solution2", f"solution{gold + 1}")
    if kind == "syn_winogrande":
        (a, b), gold = _choices(rng, category, 2)
        return _record(f"Please choose the correct answer to fill in the blank to complete the given sentence: "
                       f"the _ is an {category}.\n\nOption1: {a} Option2: {b} Answer format: option1/option2",
                       f"option{gold + 1}")
    if kind == "syn_arc":
        words, gold = _choices(rng, category, 3)
        options = " ".join(f"Answer{i + 1}: {w}" for i, w in enumerate(words))
        return _record(f"Please choose the correct answer to the question: which one is an {category}?\n\n"
                       f"{options}\n\nAnswer format: answer1/answer2/answer3", f"answer{gold + 1}")
    raise ValueError(f"unknown synthetic set '{kind}'; valid: {SETS}")


def make_train(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` training records, the four sets interleaved (like the merged commonsense_170k)."""
    rng = random.Random(seed)
    return [make_record(SETS[i % len(SETS)], rng) for i in range(n)]


def make_eval(kind: str, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` evaluation records of set ``kind``; use a seed different from the training data's."""
    rng = random.Random(f"{seed}-{kind}")
    return [make_record(kind, rng) for _ in range(n)]
