"""Alpaca-style prompts of LLM-Adapters (Hu et al., 2023) and the label masking used to train on them.

The templates are reproduced character for character from LLM-Adapters @ 8166572 (``finetune.py`` and
``commonsense_evaluate.py`` ``generate_prompt``), quirks included, because a different whitespace is a different token
sequence for the LLM:

- training (``finetune.py``, ``generate_prompt``): two spaces after "request.", 16 spaces of
  indentation, and the blank line between instruction and response holds 16 spaces;
- evaluation (``commonsense_evaluate.py``, ``generate_prompt``): one space after "request.", the same
  indentation, an empty blank line, and the prompt ends with the indentation after "### Response:".

Records with a non-empty ``input`` use the "paired with an input" variant of each template (none of
the 170k commonsense records has one, but the schema allows it).

Label masking: with ``train_on_inputs=False`` (the SMT code's choice) the prompt tokens get label -100
and the loss covers only the response and the appended EOS; with ``train_on_inputs=True`` (the
LLM-Adapters / DoRA default) the labels are the whole sequence.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100  # label value the cross-entropy of transformers ignores

_TRAIN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "                \n"
    "                ### Response:\n"
    "                {output}"
)
_TRAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.  \n\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "                \n"
    "                ### Input:\n"
    "                {input}\n"
    "                \n"
    "                ### Response:\n"
    "                {output}"
)
_EVAL_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "\n"
    "                ### Response:\n"
    "                "
)
_EVAL_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "\n"
    "                ### Input:\n"
    "                {input}\n"
    "\n"
    "                ### Response:\n"
    "                "
)
RESPONSE_MARKER = "### Response:"


def train_prompt(instruction: str, output: str, input: str = "") -> str:  # noqa: A002 - the schema's field name
    """The training text of one record (``finetune.py``): prompt followed by the target ``output``."""
    template = _TRAIN_WITH_INPUT if input else _TRAIN_NO_INPUT
    return template.format(instruction=instruction, input=input, output=output)


def eval_prompt(instruction: str, input: str = "") -> str:  # noqa: A002
    """The generation prompt of one record (``commonsense_evaluate.py``)."""
    template = _EVAL_WITH_INPUT if input else _EVAL_NO_INPUT
    return template.format(instruction=instruction, input=input)


def encode_for_training(
    tokenizer: Any, record: dict[str, str], cutoff_len: int, train_on_inputs: bool, add_eos: bool = True
) -> dict[str, list[int]]:
    """Token ids, attention mask and labels of one training record, as ``finetune.py`` builds them.

    The full text is truncated to ``cutoff_len`` tokens; EOS is appended when it fits (and is not
    already last). The prompt length is measured by tokenizing the prompt alone (the record with an
    empty ``output``), exactly as LLM-Adapters does, and those positions get :data:`IGNORE_INDEX`
    unless ``train_on_inputs``.
    """
    full = tokenizer(train_prompt(record["instruction"], record["output"], record.get("input", "")),
                     truncation=True, max_length=cutoff_len, add_special_tokens=True)
    ids = list(full["input_ids"])
    eos = tokenizer.eos_token_id
    if add_eos and len(ids) < cutoff_len and (not ids or ids[-1] != eos):
        ids.append(eos)
    labels = list(ids)
    if not train_on_inputs:
        prompt = tokenizer(train_prompt(record["instruction"], "", record.get("input", "")),
                           truncation=True, max_length=cutoff_len, add_special_tokens=True)
        n_prompt = len(prompt["input_ids"])
        labels = [IGNORE_INDEX] * n_prompt + labels[n_prompt:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def encode_for_generation(tokenizer: Any, record: dict[str, str]) -> list[int]:
    """Prompt token ids of one evaluation record (not truncated, as ``commonsense_evaluate.py``)."""
    return list(tokenizer(eval_prompt(record["instruction"], record.get("input", "")),
                          add_special_tokens=True)["input_ids"])
