"""Bad input fails before training, with one clear message."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from peftlab.errors import ConfigError, DataUnavailableError
from peftlab.methods import build_method
from peftlab.tasks import build_task
from peftlab.train import build, validate
from tests.conftest import ROOT, compose_config


def test_unknown_method_name_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; valid methods: .*full.*lora"):
        build_method({"name": "nope"})


def test_unknown_task_family_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown task family 'nope'; valid task familys?: .*glue"):
        build_task({"family": "nope", "name": "x"})


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['rank'\]; valid options: .*'r'"):
        build_method({"name": "lora", "rank": 8})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.r=0", "LoRA rank"),
        ("method.alpha=-1", "alpha"),
        ("method.dropout=1.0", "dropout"),
        ("method.lr=0", "lr"),
        ("task.batch_size=0", "batch_size"),
        ("task.epochs=0", "epochs"),
        ("optim.warmup_ratio=1.5", "warmup_ratio"),
        ("method.targets=[nope]", r"unknown target\(s\) \['nope'\].*valid targets"),
        ("task.main_metric=f2", "main_metric"),
    ],
)
def test_impossible_values_fail_in_validation(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([override]))


def test_missing_dataset_offline_says_how_to_get_it(tmp_path) -> None:
    cfg = compose_config(["task=rte", "model=tiny_bert"], tmp_path)
    start = time.time()
    with pytest.raises(DataUnavailableError, match=r"could not load dataset 'nyu-mll/glue/rte'.*HF_DATASETS_OFFLINE"):
        build(cfg)
    assert time.time() - start < 60, "offline failure must be prompt"


def test_missing_model_offline_says_how_to_get_it(tmp_path) -> None:
    cfg = compose_config(["model=roberta_base"], tmp_path)
    with pytest.raises(DataUnavailableError, match=r"could not load .*FacebookAI/roberta-base.*model.path"):
        build(cfg)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_unknown_method_lists_options() -> None:
    proc = _cli("method=nope")
    assert proc.returncode != 0
    assert "Could not find 'method/nope'" in proc.stderr and "lora" in proc.stderr


def test_cli_offline_dataset_is_one_line_not_a_traceback(tmp_path) -> None:
    proc = _cli("task=rte", "model=tiny_bert", f"paths.results_dir={tmp_path}", f"hydra.run.dir={tmp_path}/out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: could not load dataset 'nyu-mll/glue/rte'")
    assert "Traceback" not in proc.stderr
