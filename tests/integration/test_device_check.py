"""``DEVICE_CHECK_CPU=1 bash scripts/device_check.sh``, the CPU dry run of the GPU device check (2 processes over
gloo), exits 0 with the results its header writes down as the expected output: a lent GPU's minutes are not
spent on a script that fails before any GPU runs it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "device_check.sh"


def expected_results() -> dict[str, str]:
    """check → PASS/SKIP, from the ``Expected output, DEVICE_CHECK_CPU=1`` block of the script's header."""
    header = SCRIPT.read_text().split("\nset -u", 1)[0]
    block = header.split("# Expected output, DEVICE_CHECK_CPU=1", 1)[1].split("# On GPUs:", 1)[0]
    return dict(re.findall(r"^#\s+(\w+)\s+(PASS|SKIP|FAIL)\b", block, flags=re.MULTILINE))


@pytest.mark.slow
def test_device_check_dry_run_gives_the_expected_output(tmp_path: Path) -> None:
    expected = expected_results()
    assert len(expected) >= 10 and set(expected.values()) == {"PASS", "SKIP"}
    env = {**os.environ, "DEVICE_CHECK_CPU": "1", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = [line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines()[1:]]
    assert {name: result for name, result, *_ in rows} == expected, proc.stdout
