"""SQuAD metrics with the official definitions.

v1.1: the official ``evaluate-v1.1.py`` (also ``huggingface/evaluate`` ``metrics/squad/compute_score.py``):

- normalisation: lower-case, drop ``string.punctuation``, drop the articles ``a|an|the``, collapse whitespace;
- EM = normalised strings equal; F1 = token-overlap F1, **0 when no token is shared** (so a prediction and a
  gold that both normalise to "" get EM 1 but F1 0: the official ``f1_score`` returns 0 when ``num_same == 0``);
- each question scores its max over *all* its gold answers; ``exact_match``/``f1`` are means ×100.

We do not use :class:`torchmetrics.text.SQuAD` for v1.1: it scores token F1 with the v2.0 rule (1 when both
sides are empty), which differs from the v1.1 script exactly in that case.

v2.0: the official ``evaluate-v2.0.py`` (also ``huggingface/evaluate`` ``metrics/squad_v2/compute_score.py``):

- normalisation as v1.1;
- gold answers whose normalisation is empty are dropped; a question left with none is unanswerable
  and its gold is ``[""]``;
- EM = normalised strings equal; F1 = token-overlap F1, except that if the gold or the prediction has
  no token, F1 = EM = (both have none);
- a question whose no-answer probability exceeds ``na_prob_thresh`` (official default 1.0) is scored
  as if "" had been predicted;
- ``exact``/``f1`` over all questions, ``HasAns_*``/``NoAns_*`` over the answerable/unanswerable ones,
  and ``best_exact``/``best_f1`` with their thresholds: the best score reachable by predicting
  "no answer" whenever the no-answer probability exceeds a threshold (``find_best_thresh``).

Departures: the official v2 key ``exact`` is reported as ``exact_match`` (the v1.1 key), so both versions
share ``exact_match`` and ``f1``; a question without a prediction is an error (the official scripts
score it 0 with a printed warning, v2.0 then leaves it out of the totals).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Official SQuAD normalisation: lower → remove punctuation → remove articles → collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_score(gold: str, pred: str) -> int:
    """EM of one gold/prediction pair (same in v1.1 and v2.0): the normalised strings are equal."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def _overlap_f1(gold_toks: Sequence[str], pred_toks: Sequence[str]) -> float:
    num_same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def f1_v1(gold: str, pred: str) -> float:
    """Token F1 of one gold/prediction pair, v1.1 rule: 0 whenever no token is shared, empty sides included."""
    return _overlap_f1(normalize_answer(gold).split(), normalize_answer(pred).split())


def f1_v2(gold: str, pred: str) -> float:
    """Token F1 of one gold/prediction pair, v2.0 rule: 1 if both are empty, 0 if only one is."""
    gold_toks = normalize_answer(gold).split()
    pred_toks = normalize_answer(pred).split()
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    return _overlap_f1(gold_toks, pred_toks)


def gold_answers(texts: Sequence[str]) -> list[str]:
    """The gold answers the v2.0 script scores against: non-empty after normalisation, else ``[""]``."""
    golds = [t for t in texts if normalize_answer(t)]
    return golds or [""]


def _check_predictions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    missing = sorted(set(references) - set(predictions))
    if missing:
        raise KeyError(f"no prediction for {len(missing)} question(s), e.g. {missing[:3]}")
    if not references:
        raise ValueError("a SQuAD score needs at least one question")


def squad_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` (×100) of the v1.1 script; ``references``: id → gold texts (at least one each)."""
    _check_predictions(predictions, references)
    exact = f1 = 0.0
    for qid, golds in references.items():
        pred = predictions[qid]
        exact += max(exact_score(g, pred) for g in golds)
        f1 += max(f1_v1(g, pred) for g in golds)
    return {"exact_match": 100.0 * exact / len(references), "f1": 100.0 * f1 / len(references)}


def _apply_no_answer_threshold(scores: dict[str, float], na_probs: Mapping[str, float],
                               has_answer: Mapping[str, bool], threshold: float) -> dict[str, float]:
    return {qid: float(not has_answer[qid]) if na_probs[qid] > threshold else s for qid, s in scores.items()}


def find_best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float],
                        na_probs: Mapping[str, float], has_answer: Mapping[str, bool]) -> tuple[float, float]:
    """Official ``find_best_thresh``: sweep the no-answer threshold over the sorted ``na_probs``.

    Start from "every question answered with no answer" (score = #unanswerable); walking up the
    sorted no-answer probabilities, answering question q adds its raw score if q has an answer, −1 if
    q has none but the prediction is non-empty, 0 otherwise. Returns (best score ×100, threshold).
    """
    cur = best = float(sum(not has_answer[q] for q in scores))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            cur += scores[qid]
        elif predictions[qid]:
            cur -= 1.0
        if cur > best:
            best, best_thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def squad_v2(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
             na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0) -> dict[str, float]:
    """The official v2.0 report (×100). ``references``: id → gold texts (empty list = unanswerable);
    ``na_probs``: id → no-answer score (default 0 for all, as the official script without a file);
    ``na_prob_thresh``: questions whose no-answer score exceeds it are scored as "" (the official default
    1.0 is meant for probabilities; ``math.inf`` scores the predictions exactly as given). ``best_*`` are
    searched over the raw scores and ``na_probs``, whatever ``na_prob_thresh`` is.

    Keys: exact_match, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1,
    NoAns_total (those present), best_exact, best_exact_thresh, best_f1, best_f1_thresh.
    """
    _check_predictions(predictions, references)
    na_probs = {qid: 0.0 for qid in references} if na_probs is None else dict(na_probs)
    has_answer = {qid: gold_answers(texts) != [""] for qid, texts in references.items()}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, texts in references.items():
        golds, pred = gold_answers(texts), predictions[qid]
        exact_raw[qid] = float(max(exact_score(g, pred) for g in golds))
        f1_raw[qid] = max(f1_v2(g, pred) for g in golds)
    exact = _apply_no_answer_threshold(exact_raw, na_probs, has_answer, na_prob_thresh)
    f1 = _apply_no_answer_threshold(f1_raw, na_probs, has_answer, na_prob_thresh)

    def mean(values: dict[str, float], ids: list[str]) -> float:
        return 100.0 * sum(values[q] for q in ids) / len(ids)

    ids = list(references)
    out = {"exact_match": mean(exact, ids), "f1": mean(f1, ids), "total": float(len(ids))}
    has, has_not = [q for q in ids if has_answer[q]], [q for q in ids if not has_answer[q]]
    for prefix, subset in (("HasAns", has), ("NoAns", has_not)):
        if subset:
            out.update({f"{prefix}_exact": mean(exact, subset), f"{prefix}_f1": mean(f1, subset),
                        f"{prefix}_total": float(len(subset))})
    out["best_exact"], out["best_exact_thresh"] = find_best_threshold(predictions, exact_raw, na_probs, has_answer)
    out["best_f1"], out["best_f1_thresh"] = find_best_threshold(predictions, f1_raw, na_probs, has_answer)
    return out

