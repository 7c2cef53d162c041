"""The offline tokenizer of ``model=tiny_llama``: a small byte-level BPE built with ``tokenizers``.

Byte-level, so any text round-trips (like LLaMA's byte-fallback tokenizer), with LLaMA's special-token
layout: ``<unk>``=0 (also the pad token, as LLM-Adapters sets ``pad_token_id = 0``), ``<s>``=1 (BOS,
prepended), ``</s>``=2 (EOS). Merges are learned from the two prompt templates filled with the
synthetic records, so a prompt is ~60 tokens instead of ~350 bytes.

The result is shipped in ``tiny_llama/`` next to this file (a few tens of KB) and loads with
``transformers.AutoTokenizer``. Rebuild it with ``python -m peftlab.tasks.commonsense.tiny_tokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from peftlab.tasks.commonsense import synthetic
from peftlab.tasks.commonsense.prompt import eval_prompt, train_prompt

SPECIAL = ["<unk>", "<s>", "</s>"]
VOCAB_SIZE = 512
SHIPPED_DIR = Path(__file__).with_name("tiny_llama")


def corpus(n: int = 800, seed: int = 0) -> list[str]:
    """Training and evaluation prompts of synthetic records: the text the tokenizer must compress."""
    texts = []
    for rec in synthetic.make_train(n, seed):
        texts.append(train_prompt(rec["instruction"], rec["output"]))
        texts.append(eval_prompt(rec["instruction"]))
    return texts


def build(out_dir: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train the BPE and save a transformers-loadable tokenizer directory at ``out_dir``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # a word or punctuation run takes at most ONE leading space; other whitespace runs are their own pre-token,
    # so the prompt alone ("... ### Response:\n" + 16 spaces) and prompt + answer share their token prefix:
    # the eval prompt ends on a token seen in training and the label mask falls exactly on the response
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\w+| ?[^\w\s]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B", special_tokens=[("<s>", 1), ("</s>", 2)])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>",
              "eos_token": "</s>", "pad_token": "<unk>", "padding_side": "left", "model_max_length": 2048}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # models.resolve_path finds a "package:" model directory by its config.json: describe the tiny LLaMA
    model_config = {"model_type": "llama", "vocab_size": tok.get_vocab_size(), "pad_token_id": 0,
                    "bos_token_id": 1, "eos_token_id": 2}
    (out_dir / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    return out_dir


if __name__ == "__main__":
    print(f"wrote {build(SHIPPED_DIR)}")
