"""From per-window start/end logits to one answer string per question.

The Hugging Face recipe (``transformers`` ``examples/pytorch/question-answering/utils_qa.py``,
``postprocess_qa_predictions``), itself the logic of Google's BERT ``run_squad.py``:

- per window, the ``n_best_size`` (20) highest start and end logits; a pair (s, e) is a candidate if
  both tokens lie in the context, e ≥ s and e − s + 1 ≤ ``max_answer_length`` (30); its score is
  start_logit[s] + end_logit[e]; candidates of all windows of a question compete;
- the text is the context slice between the character offsets of s and e;
- v2.0: the null score is the *minimum* over windows of start_logit[CLS] + end_logit[CLS]; the
  answer is "" when null_score − (best non-null start + end logit) > ``null_score_diff_threshold``
  (0). That difference is returned per question (the official script's ``na_prob`` file, used for
  the best-threshold search).
- a question without any valid candidate gets the text "empty", as the recipe does.

Departure: the null (CLS) position is the window's CLS index rather than always token 0 (identical
for BERT/RoBERTa/DeBERTa, which put CLS first); windows carry no ``token_is_max_context`` (the recipe
ignores it for fast tokenizers too).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Candidate:
    score: float
    start_logit: float
    end_logit: float
    start_char: int
    end_char: int


def window_candidates(start_logits: np.ndarray, end_logits: np.ndarray, offsets: Sequence[Any],
                      n_best_size: int, max_answer_length: int) -> list[Candidate]:
    """The valid spans among the top ``n_best_size`` start × end positions of one window."""
    top_starts = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()  # (n_best,) best first
    top_ends = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
    out: list[Candidate] = []
    for s in top_starts:
        for e in top_ends:
            if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                continue  # outside the context (question, special tokens, padding)
            if e < s or e - s + 1 > max_answer_length:
                continue
            start_logit, end_logit = float(start_logits[s]), float(end_logits[e])
            out.append(Candidate(start_logit + end_logit, start_logit, end_logit, offsets[s][0], offsets[e][1]))
    return out


def postprocess(examples: Sequence[dict[str, Any]], features: Sequence[dict[str, Any]],
                start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray], *,
                version_2_with_negative: bool = False, n_best_size: int = 20, max_answer_length: int = 30,
                null_score_diff_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, float]]:
    """``(predictions, null_odds)``: question id → answer text, and (v2) id → null score − best span score.

    ``examples``: dicts with ``id`` and ``context``; ``features[i]``: ``example_index``, ``cls_index`` and
    ``offset_mapping`` of window i, whose logits are ``start_logits[i]``/``end_logits[i]``.
    """
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"{len(features)} windows but {len(start_logits)}/{len(end_logits)} logit rows")
    windows_of: dict[int, list[int]] = defaultdict(list)
    for i, feature in enumerate(features):
        windows_of[feature["example_index"]].append(i)
    predictions: dict[str, str] = {}
    null_odds: dict[str, float] = {}
    for index, example in enumerate(examples):
        candidates: list[Candidate] = []
        null: Candidate | None = None
        for i in windows_of[index]:
            starts, ends = np.asarray(start_logits[i]), np.asarray(end_logits[i])
            cls = features[i]["cls_index"]
            window_null = float(starts[cls] + ends[cls])
            if null is None or window_null < null.score:
                null = Candidate(window_null, float(starts[cls]), float(ends[cls]), 0, 0)
            candidates += window_candidates(starts, ends, features[i]["offset_mapping"], n_best_size,
                                            max_answer_length)
        best = max(candidates, key=lambda c: c.score) if candidates else None
        text = example["context"][best.start_char : best.end_char] if best else "empty"
        if not version_2_with_negative:
            predictions[example["id"]] = text
            continue
        if null is None:
            raise ValueError(f"question {example['id']} has no window")
        # the recipe keeps the best n_best_size candidates (+ null) and takes the first non-empty text;
        # with no candidate, the inserted "empty" entry has logits 0
        best_logits = best.start_logit + best.end_logit if best else 0.0
        diff = null.score - best_logits
        null_odds[example["id"]] = diff
        predictions[example["id"]] = "" if diff > null_score_diff_threshold else text
    return predictions, null_odds
