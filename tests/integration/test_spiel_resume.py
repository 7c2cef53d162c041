"""SpIEL resumed from a checkpoint taken at a reselection step ends bit-identical to the uninterrupted run.

The reselection after step s leaves the grown slots' Adam moments to be seeded at step s + 1 (an optimizer
pre-hook); a checkpoint of step s must carry them. 12 steps, R = 4, A = 1: reselections after steps 1, 5 and 9;
checkpoints every 3 steps; the run fails at step 10 (in process) and resumes from the checkpoint of step 9.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from peftlab.checkpoint import load_checkpoint
from peftlab.train import run
from tests.conftest import compose_config
from tests.integration.test_resume import COMMON, FailAtStep, _final_state, _in_process

SPIEL = ["method=spiel", "method.reselection_steps=4", "method.selection_accumulation_steps=1", "method.lr=1e-2"]


def test_spiel_resumes_exactly_from_a_reselection_step(tmp_path: Path) -> None:
    overrides = [*COMMON, *SPIEL]
    whole = _in_process(overrides, tmp_path / "whole", tmp_path / "runs_whole")
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "cut")
        cfg.paths.results_dir = str(tmp_path / "runs")
        cfg.callbacks.fail = {"_target_": f"{FailAtStep.__module__}.FailAtStep", "step": 10}
    with pytest.raises(RuntimeError, match="interrupted at step 10"):
        run(cfg)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == 9  # a reselection
    assert _in_process(overrides, tmp_path / "cut", tmp_path / "runs") == whole
    a, _ = _final_state(tmp_path / "whole")
    b, _ = _final_state(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
