"""Prompt templates and label masking of the commonsense task (LLM-Adapters finetune.py / commonsense_evaluate.py)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from peftlab.models import resolve_path
from peftlab.tasks.commonsense.prompt import (
    IGNORE_INDEX,
    encode_for_generation,
    encode_for_training,
    eval_prompt,
    train_prompt,
)

RECORD = {
    "instruction": "Please choose the correct solution to the question: which one is a fruit?\n\n"
                   "Solution1: rake\n\nSolution2: banana\n\nAnswer format: solution1/solution2",
    "input": "",
    "output": "the correct answer is solution2",
    "answer": "solution2",
}


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_path("package:peftlab.tasks.commonsense.tiny_llama"))


def test_train_template_is_llm_adapters_verbatim() -> None:
    # two spaces after "request.", 16-space indentation, blank line of 16 spaces
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
        "\n"
        "                ### Instruction:\n"
        "                Q?\n"
        "                \n"
        "                ### Response:\n"
        "                the correct answer is true"
    )
    assert train_prompt("Q?", "the correct answer is true") == expected


def test_eval_template_is_llm_adapters_verbatim() -> None:
    # one space after "request.", empty blank line, ends with the indentation after "### Response:"
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
        "\n"
        "                ### Instruction:\n"
        "                Q?\n"
        "\n"
        "                ### Response:\n"
        "                "
    )
    assert eval_prompt("Q?") == expected


def test_input_variant_used_only_when_input_given() -> None:
    assert "### Input:\n                ctx\n" in train_prompt("Q?", "out", input="ctx")
    assert "paired with an input" in eval_prompt("Q?", input="ctx")
    assert "### Input:" not in train_prompt("Q?", "out") and "### Input:" not in eval_prompt("Q?")


def test_response_only_labels(tok) -> None:
    enc = encode_for_training(tok, RECORD, cutoff_len=256, train_on_inputs=False)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels) == len(enc["attention_mask"])
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id  # BOS prepended, EOS appended
    n_prompt = len(tok(train_prompt(RECORD["instruction"], ""))["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    # the supervised tokens are exactly the response and EOS
    assert tok.decode(labels[n_prompt:-1]) == RECORD["output"]
    assert labels[-1] == tok.eos_token_id


def test_train_on_inputs_labels_everything(tok) -> None:
    enc = encode_for_training(tok, RECORD, cutoff_len=256, train_on_inputs=True)
    assert enc["labels"] == enc["input_ids"]


def test_cutoff_truncates_and_drops_eos(tok) -> None:
    full = encode_for_training(tok, RECORD, cutoff_len=256, train_on_inputs=True)
    short = encode_for_training(tok, RECORD, cutoff_len=20, train_on_inputs=False)
    assert len(short["input_ids"]) == 20 and short["input_ids"] == full["input_ids"][:20]
    assert tok.eos_token_id not in short["input_ids"]  # EOS only when the text fits, as finetune.py
    assert set(short["labels"]) == {IGNORE_INDEX}  # the response was cut off entirely


def test_add_eos_switch(tok) -> None:
    enc = encode_for_training(tok, RECORD, cutoff_len=256, train_on_inputs=True, add_eos=False)
    assert enc["input_ids"][-1] != tok.eos_token_id


def test_generation_prompt_is_eval_template(tok) -> None:
    ids = encode_for_generation(tok, RECORD)
    assert tok.decode(ids, skip_special_tokens=True) == eval_prompt(RECORD["instruction"])
