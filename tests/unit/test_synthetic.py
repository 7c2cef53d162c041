"""The synthetic demo data: deterministic, balanced, and not solvable by word overlap alone."""

from __future__ import annotations

from peftlab.tasks.synthetic import make_pairs


def test_deterministic_and_balanced() -> None:
    a, b = make_pairs(200, 7), make_pairs(200, 7)
    assert a == b
    assert a != make_pairs(200, 8)
    assert sum(a["label"]) == 100


def test_labels_follow_the_premise() -> None:
    rows = make_pairs(300, 0)
    hard_negatives = 0
    for s1, s2, label in zip(rows["sentence1"], rows["sentence2"], rows["label"], strict=True):
        obj, place = s2.removeprefix("The ").removesuffix(".").split(" is in the ")
        follows = f"the {obj} in the {place}" in s1
        assert follows == bool(label), (s1, s2, label)
        hard_negatives += (not label) and f"in the {place}" in s1
    assert hard_negatives > 50  # negatives naming the other object's place exist
