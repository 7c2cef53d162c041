"""Classification/regression metrics with the definitions GLUE uses, computed by scikit-learn/SciPy.

All values are returned in percent (×100), as papers report them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from peftlab.errors import ConfigError


def accuracy(preds: Sequence[float], refs: Sequence[float]) -> float:
    return 100.0 * skm.accuracy_score(refs, preds)


def f1(preds: Sequence[float], refs: Sequence[float]) -> float:
    """Binary F1 of the positive class (label 1), as GLUE's MRPC/QQP."""
    return 100.0 * skm.f1_score(refs, preds, average="binary", pos_label=1)


def mcc(preds: Sequence[float], refs: Sequence[float]) -> float:
    """Matthews correlation (CoLA)."""
    return 100.0 * skm.matthews_corrcoef(refs, preds)


def pearson(preds: Sequence[float], refs: Sequence[float]) -> float:
    return 100.0 * float(stats.pearsonr(np.asarray(preds, float), np.asarray(refs, float))[0])


def spearman(preds: Sequence[float], refs: Sequence[float]) -> float:
    return 100.0 * float(stats.spearmanr(np.asarray(preds, float), np.asarray(refs, float))[0])


METRICS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(names: Sequence[str], preds: Sequence[float], refs: Sequence[float]) -> dict[str, float]:
    """``{name: value}`` for each metric in ``names``."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; valid metrics: {sorted(METRICS)}")
    return {n: METRICS[n](preds, refs) for n in names}
