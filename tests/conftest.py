"""Shared fixtures: compose the real Hydra config with overrides, outputs under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
# The libraries the tests use are imported below, before any test, because importing them writes os.environ
# (torch/Lightning: PYTORCH_NVML_BASED_CUDA_CHECK, TORCHINDUCTOR_CACHE_DIR; sklearn/joblib: KMP_*): the state every
# test must leave as it found it (_leaves_process_state_alone) is the state after those imports. After the lines
# above: huggingface_hub reads HF_HUB_OFFLINE when imported.
import sklearn  # noqa: E402, F401
import torch  # noqa: E402

import peftlab.train  # noqa: E402, F401
from tests.process_state import ProcessState  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test`: one worker per core, each one torch thread (no
    # oversubscription); tests that compare a train.py child with this process pass it torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_config(overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    """The project's config with ``overrides``; outputs/results redirected to ``tmp_path``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "out")
            cfg.paths.results_dir = str(tmp_path / "runs")
    return cfg


TINY = [
    "model=tiny_bert",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks=none",
    "task.num_train=64",
    "task.num_validation=32",
    "task.batch_size=16",
]


@pytest.fixture
def cfg_factory(tmp_path: Path) -> Callable[..., DictConfig]:
    """``cfg_factory(*overrides, tiny=True)`` → composed config writing under tmp_path."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_config([*(TINY if tiny else []), *overrides], tmp_path)

    return make


@pytest.fixture(autouse=True)
def _leaves_process_state_alone() -> Iterator[None]:
    """Every test must leave the process-global state (signal handlers and mask, environment, working directory,
    torch's global switches) as it found it: a change fails the test at teardown and is put back, so that no later
    test, nor its ``train.py`` child, runs in what this one left (see tests/process_state.py)."""
    before = ProcessState.now()
    yield
    changed = before.changes(ProcessState.now())
    before.restore()
    assert not changed, "the test changed process-global state:\n  " + "\n  ".join(changed)
