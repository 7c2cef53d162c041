"""The repository cites papers and official repository files, never the team's notes kept outside it, and holds no
absolute path of the machine a file was made on (configs, docs, code, committed records and benchmarks)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The notes outside the repository: shared/..., its protocols.md and papers/*.md (docs/smt.md etc. are ours).
NOTES = re.compile(r"shared/|\bprotocols\.md|papers/\w+\.md|\bsparse_methods\.md")
ABSOLUTE = re.compile(r"(?<![\w.~/-])/(?:work|home|Users|root)/")


def repo_files() -> list[Path]:
    """Tracked files and new files not ignored (what a commit would hold), text only, this test excepted."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    out = []
    for name in names:
        path = ROOT / name
        if path.is_file() and path != Path(__file__).resolve() and b"\0" not in path.read_bytes()[:4096]:
            out.append(path)
    return out


def offenders(pattern: re.Pattern[str]) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:120]}" for p in repo_files()
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]


def test_no_citation_of_notes_outside_the_repository() -> None:
    found = offenders(NOTES)
    assert not found, "cite the paper or the official repository file instead:\n" + "\n".join(found)


def test_no_absolute_machine_paths() -> None:
    found = offenders(ABSOLUTE)
    assert not found, "use paths relative to the repository root:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_should() -> None:
    assert NOTES.search("see ../shared/protocols.md §3.2") and NOTES.search("(protocols.md §4.2)")
    assert NOTES.search("shared/papers/smt.md") and not NOTES.search("docs/smt.md and docs/capaboost.md")
    assert ABSOLUTE.search('"output_dir": "/root/main/multirun/x"') and ABSOLUTE.search("/home/u/data")
    assert ABSOLUTE.search("/" + "work/main/x")  # split: this file holds no path of the machine it was made on
    assert not ABSOLUTE.search("results/mini/runs/x.json") and not ABSOLUTE.search("https://x.org/home/a")
