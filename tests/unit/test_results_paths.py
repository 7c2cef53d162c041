"""Paths in run records: relative to the repository root when inside it (peftlab.results), absolute otherwise.
(That committed files hold no absolute path is tests/unit/test_citations.py.)"""

from __future__ import annotations

from pathlib import Path

from peftlab import results


def test_repo_relative_paths_round_trip(tmp_path: Path) -> None:
    inside = results.REPO_ROOT / "outputs" / "run"
    assert results.repo_relative(inside) == "outputs/run" and results.from_repo("outputs/run") == inside
    assert results.repo_relative(tmp_path) == str(tmp_path) and results.from_repo(str(tmp_path)) == tmp_path
    data = {"a": str(inside), "b": [str(tmp_path), "test/accuracy"], "c": 3, "d": None}
    assert results.repo_relative_paths(data) == {"a": "outputs/run", "b": [str(tmp_path), "test/accuracy"], "c": 3,
                                                 "d": None}
