"""Every shipped config composes and validates (before any data or weights load)."""

from __future__ import annotations

import pytest

from peftlab.train import validate_config
from tests.conftest import CONF, compose_config


def _options(group: str) -> list[str]:
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@pytest.mark.parametrize("method", _options("method"))
def test_every_method_config_validates(method: str) -> None:
    spec, built, _ = validate_config(compose_config([f"method={method}"]))
    assert built.name == compose_config([f"method={method}"]).method.name


@pytest.mark.parametrize("task", _options("task"))
def test_every_task_config_validates(task: str) -> None:
    _, _, built = validate_config(compose_config([f"task={task}", "method=full"]))
    assert built.main_metric


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_config_validates(model: str) -> None:
    spec, _, _ = validate_config(compose_config([f"model={model}", "method=full"]))
    assert spec.name == model.split("/")[-1]


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks"])
def test_every_option_of_other_groups_composes(group: str) -> None:
    for option in _options(group):
        compose_config([f"{group}={option}"])


def test_glue_configs_use_official_metrics() -> None:
    expected = {"cola": "mcc", "stsb": "pearson", "mrpc": "accuracy", "qqp": "accuracy", "rte": "accuracy"}
    for task, main in expected.items():
        cfg = compose_config([f"task={task}"])
        assert cfg.task.main_metric == main
    assert "f1" in compose_config(["task=mrpc"]).task.metrics
    assert compose_config(["task=stsb"]).task.num_labels == 1
    assert compose_config(["task=mnli_mm"]).task.splits.test == "validation_mismatched"
