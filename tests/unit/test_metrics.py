"""GLUE metrics equal their textbook definitions on fixed inputs (hand-computed here, not via sklearn)."""

from __future__ import annotations

import math

import pytest

from peftlab import metrics
from peftlab.errors import ConfigError

PREDS = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
REFS = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]
# confusion: tp=4 (idx 0,3,5,8), tn=3 (1,4,7), fp=2 (2,9), fn=1 (6)
TP, TN, FP, FN = 4, 3, 2, 1


def test_accuracy() -> None:
    assert metrics.accuracy(PREDS, REFS) == pytest.approx(100 * (TP + TN) / 10)


def test_f1_positive_class() -> None:
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    assert metrics.f1(PREDS, REFS) == pytest.approx(100 * 2 * precision * recall / (precision + recall))


def test_mcc() -> None:
    denom = math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert metrics.mcc(PREDS, REFS) == pytest.approx(100 * (TP * TN - FP * FN) / denom)


def test_pearson_and_spearman() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    r = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert metrics.pearson(x, y) == pytest.approx(100 * r)
    # ranks of y with the tie (4, 4) averaged: [1, 2.5, 4, 2.5]
    ry = [1.0, 2.5, 4.0, 2.5]
    mr = sum(ry) / 4
    rho = sum((a - 2.5) * (b - mr) for a, b in zip([1, 2, 3, 4], ry, strict=True)) / math.sqrt(
        5.0 * sum((b - mr) ** 2 for b in ry))
    assert metrics.spearman(x, y) == pytest.approx(100 * rho)


def test_unknown_metric_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid metrics: .*accuracy"):
        metrics.compute(["bleu"], [1], [1])
