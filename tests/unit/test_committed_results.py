"""What is committed under results/ holds no absolute path of the machine that made it (run records and benchmark
records store paths relative to the repository root: peftlab.results.repo_relative_paths)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peftlab import results

ROOT = Path(__file__).resolve().parents[2]


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)
    elif isinstance(data, str):
        yield data


def test_committed_json_under_results_holds_no_absolute_path() -> None:
    try:
        tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    offenders = [(name, s) for name in tracked if name.endswith(".json")
                 for s in _strings(json.loads((ROOT / name).read_text())) if os.path.isabs(s)]
    assert not offenders, offenders[:5]


def test_repo_relative_paths_round_trip(tmp_path: Path) -> None:
    inside = results.REPO_ROOT / "outputs" / "run"
    assert results.repo_relative(inside) == "outputs/run" and results.from_repo("outputs/run") == inside
    assert results.repo_relative(tmp_path) == str(tmp_path) and results.from_repo(str(tmp_path)) == tmp_path
    data = {"a": str(inside), "b": [str(tmp_path), "test/accuracy"], "c": 3, "d": None}
    assert results.repo_relative_paths(data) == {"a": "outputs/run", "b": [str(tmp_path), "test/accuracy"], "c": 3,
                                                 "d": None}
