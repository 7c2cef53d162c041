"""Loading the LLM-Adapters commonsense files: ``commonsense_170k.json`` and the 8 ``<set>/test.json``.

Every file is a JSON list of records ``{"instruction", "input", "output", "answer"}`` (``output`` is
"the correct answer is <answer>"). The files are the ones LLM-Adapters publishes, used as they are,
because the label strings and instruction wording must match the answer regexes:

- train: ``ft-training_set/commonsense_170k.json`` (~98 MB; also the hub dataset ``zwhe99/commonsense_170k``);
- eval: ``dataset/<name>/test.json`` for boolq, piqa, social_i_qa, hellaswag, winogrande, ARC-Easy,
  ARC-Challenge, openbookqa (3270/1838/1954/10042/1267/2376/1172/500 records).

A path that is not a local file but looks like a hub id is loaded with ``datasets`` (split ``train``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftlab.errors import DataUnavailableError
from peftlab.tasks.hub import load_hf_dataset

RECORD_FIELDS = ("instruction", "output", "answer")  # ``input`` is optional (always "" in the 170k set)
LLM_ADAPTERS_RAW = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main"
DOWNLOAD_HINT = (
    "Download the LLM-Adapters files (see docs/commonsense.md): "
    f"{LLM_ADAPTERS_RAW}/ft-training_set/commonsense_170k.json and {LLM_ADAPTERS_RAW}/dataset/<name>/test.json "
    "(or clone the repository), then set task.train_file and task.eval_dir."
)


def check_records(records: list[dict[str, Any]], where: str) -> list[dict[str, str]]:
    """The records with ``input`` filled in; a record lacking a field fails with the file and index."""
    if not isinstance(records, list) or not records:
        raise DataUnavailableError(f"{where}: expected a non-empty JSON list of records")
    out = []
    for i, rec in enumerate(records):
        missing = [f for f in RECORD_FIELDS if not isinstance(rec.get(f), str)]
        if missing:
            raise DataUnavailableError(f"{where}: record {i} lacks text field(s) {missing} "
                                       f"(expected the LLM-Adapters schema {list(RECORD_FIELDS)} + input)")
        out.append({"instruction": rec["instruction"], "input": rec.get("input") or "",
                    "output": rec["output"], "answer": rec["answer"]})
    return out


def load_records(path: str) -> list[dict[str, str]]:
    """Records from a local JSON/JSONL file, or from a hub dataset id when ``path`` is not a local file."""
    file = Path(path).expanduser()
    if file.is_file():
        text = file.read_text(encoding="utf-8")
        try:
            records = json.loads(text) if file.suffix != ".jsonl" else [
                json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DataUnavailableError(f"{file}: not valid JSON ({err})") from err
        return check_records(records, str(file))
    if file.suffix in (".json", ".jsonl") or path.startswith((".", "/", "~")):
        raise DataUnavailableError(f"commonsense data file '{path}' not found. {DOWNLOAD_HINT}")
    return check_records(list(load_hf_dataset(path, None, "train")), path)


def eval_file(eval_dir: str, name: str) -> str:
    """The LLM-Adapters location of evaluation set ``name`` under ``eval_dir``."""
    return str(Path(eval_dir) / name / "test.json")
