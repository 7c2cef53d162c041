"""SQuAD features: (question, context) pairs cut into overlapping windows.

The standard Hugging Face recipe (``transformers`` ``examples/pytorch/question-answering/run_qa.py``,
``prepare_train_features`` / ``prepare_validation_features``, also used by AdaLoRA's QA scripts): the
question is ``lstrip()``-ed; the pair is tokenised with ``truncation="only_second"`` (the context),
``max_length`` = ``max_seq_length`` (384), ``stride`` = ``doc_stride`` (128 overlapping tokens between
consecutive windows), ``return_overflowing_tokens`` and ``return_offsets_mapping``. A training window
is labelled with the token span of the first gold answer, or with the CLS index when the answer is not
entirely inside the window or the question is unanswerable (v2.0). An evaluation window keeps the
character offsets of its context tokens (``None`` elsewhere) and the index of its example, for
post-processing.

Departure: windows are not padded to ``max_seq_length`` here; the collate function pads each batch to
its longest window (same logits on real tokens, less compute). Tokenizers that pad on the left swap
the roles of question and context, as the recipe does.
"""

from __future__ import annotations

from typing import Any

from peftlab.config_utils import require


def check_tokenizer(tokenizer: Any, max_seq_length: int, doc_stride: int) -> None:
    """Offsets need a fast tokenizer; the stride must leave room for new context in each window."""
    require(getattr(tokenizer, "is_fast", False),
            f"SQuAD windows need a fast tokenizer (offset mapping); {type(tokenizer).__name__} is not one")
    require(0 <= doc_stride < max_seq_length,
            f"task.doc_stride ({doc_stride}) must be in [0, max_seq_length={max_seq_length})")


def _tokenize(batch: dict[str, list[Any]], tokenizer: Any, max_seq_length: int, doc_stride: int) -> Any:
    questions = [q.lstrip() for q in batch["question"]]  # some SQuAD questions start with spaces
    pad_right = tokenizer.padding_side == "right"
    first, second = (questions, batch["context"]) if pad_right else (batch["context"], questions)
    return tokenizer(
        first,
        second,
        truncation="only_second" if pad_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def _cls_index(input_ids: list[int], tokenizer: Any) -> int:
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def _context_id(tokenizer: Any) -> int:
    """Which sequence of the pair holds the context (``sequence_ids`` value)."""
    return 1 if tokenizer.padding_side == "right" else 0


def answer_token_span(offsets: list[tuple[int, int]], sequence_ids: list[int | None], context_id: int,
                      start_char: int, end_char: int) -> tuple[int, int] | None:
    """Token (start, end) covering characters [start_char, end_char) if the window holds all of it."""
    first = sequence_ids.index(context_id)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return None
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def train_features(batch: dict[str, list[Any]], tokenizer: Any, max_seq_length: int,
                   doc_stride: int) -> dict[str, list[Any]]:
    """``datasets.map(batched=True)`` function: windows with ``start_positions``/``end_positions``."""
    enc = _tokenize(batch, tokenizer, max_seq_length, doc_stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offset_map = enc.pop("offset_mapping")
    context_id = _context_id(tokenizer)
    starts: list[int] = []
    ends: list[int] = []
    for i, offsets in enumerate(offset_map):
        cls = _cls_index(enc["input_ids"][i], tokenizer)
        answers = batch["answers"][sample_map[i]]
        span = None
        if answers["answer_start"]:  # unanswerable (v2): no gold → CLS
            start_char = answers["answer_start"][0]
            span = answer_token_span(offsets, enc.sequence_ids(i), context_id,
                                     start_char, start_char + len(answers["text"][0]))
        starts.append(span[0] if span else cls)
        ends.append(span[1] if span else cls)
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    return dict(enc)


def eval_features(batch: dict[str, list[Any]], indices: list[int], tokenizer: Any, max_seq_length: int,
                  doc_stride: int) -> dict[str, list[Any]]:
    """``datasets.map(batched=True, with_indices=True)`` function: windows with ``example_index``,
    ``cls_index`` and ``offset_mapping`` (``None`` for tokens outside the context)."""
    enc = _tokenize(batch, tokenizer, max_seq_length, doc_stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offset_map = enc.pop("offset_mapping")
    context_id = _context_id(tokenizer)
    enc["example_index"] = [indices[s] for s in sample_map]
    enc["cls_index"] = [_cls_index(ids, tokenizer) for ids in enc["input_ids"]]
    enc["offset_mapping"] = [
        [list(o) if seq == context_id else None for o, seq in zip(offsets, enc.sequence_ids(i), strict=True)]
        for i, offsets in enumerate(offset_map)
    ]
    return dict(enc)
