"""Every row of docs/bad_inputs.md: the bad input, given to ``python train.py`` (its Hydra entry point, run in this
process), exits with the documented status and the documented one-line message as the last line on stderr, and
leaves nothing in results/. The table is the single source of the cases (this test parses it), so doc and
behaviour cannot drift. In a message, ``<tmp>`` stands for the test's temporary directory and a trailing ``…``
ends a prefix (the rest quotes a library's error text, which varies between versions)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY
from tests.integration.cli import run_cli

DOC = ROOT / "docs" / "bad_inputs.md"
BASE = [o for o in TINY if not o.startswith("task.num_")]  # real tasks have no generated-set sizes
ROW = re.compile(r"^\|\s*(\d+)\s*\|[^|]*\|\s*`([^`]*)`\s*\|\s*(\d+)\s*\|\s*`(.*)`\s*\|\s*$")


def doc_cases() -> list[tuple[str, list[str], int, str]]:
    """(id, overrides, exit status, message) of every table row of docs/bad_inputs.md."""
    return [(m[1], m[2].split(), int(m[3]), m[4]) for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _glue_dir(tmp: Path, name: str, rows: list[dict]) -> None:
    for split in ("train", "validation"):
        _jsonl(tmp / name / f"{split}.jsonl", rows)


SETUP: dict[str, Callable[[Path], None]] = {  # files some rows need, created under <tmp>
    "missing_column": lambda tmp: _glue_dir(tmp, "glue_nolabel", [{"sentence1": "a", "sentence2": "b"}] * 4),
    "bad_label": lambda tmp: _glue_dir(tmp, "glue_badlabel", [{"sentence1": "a", "sentence2": "b", "label": 5}] * 4),
    "commonsense_field": lambda tmp: (tmp / "cs").mkdir() or (tmp / "cs" / "train.json").write_text(
        json.dumps([{"instruction": "q?", "answer": "a"}])),
    "corrupt_ckpt": lambda tmp: (tmp / "last.ckpt").write_bytes(b"PK\x03\x04 truncated checkpoint"),
    "a_file": lambda tmp: (tmp / "afile").write_text("not a directory"),
}
NAMES = {"12": "missing_column", "13": "bad_label", "15": "commonsense_field", "16": "corrupt_ckpt",
         "17": "a_file", "35": "a_file"}
NEEDS_NO_GPU = {"34"}  # trainer=gpu is a bad input only where no GPU is visible


def test_the_table_has_the_issue_16_rows() -> None:
    assert len(doc_cases()) >= 37


@pytest.mark.parametrize(("case", "overrides", "status", "message"), doc_cases(), ids=[c[0] for c in doc_cases()])
def test_bad_input_fails_with_the_documented_message(tmp_path: Path, case: str, overrides: list[str], status: int,
                                                     message: str, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    if case in NEEDS_NO_GPU and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    if case in NAMES:
        SETUP[NAMES[case]](tmp_path)
    overrides = [o.replace("<tmp>", str(tmp_path)) for o in overrides]
    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    outputs = [f"paths.results_dir={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'out'}"]
    code = run_cli([*BASE, *(o for o in outputs if o.split("=", 1)[0] not in given), *overrides], monkeypatch)
    stderr = capsys.readouterr().err
    got = (stderr.strip().splitlines() or [""])[-1].replace(str(tmp_path), "<tmp>")
    assert code == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    if message.endswith("…"):
        assert got.startswith(message[:-1]), got
    else:
        assert got == message
    assert not list((tmp_path / "runs").rglob("*.json")), "a failed validation must leave no record"
