"""Bad input fails before training, with one clear message."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import types
import typing
from typing import Any

import pytest

from peftlab.config_utils import Range, build_dataclass
from peftlab.errors import ConfigError, DataUnavailableError
from peftlab.methods import METHODS, build_method
from peftlab.models import ModelSpec
from peftlab.run_config import OptimConfig, RunConfig
from peftlab.tasks import TASKS, build_task
from peftlab.train import build, validate
from tests.conftest import ROOT, compose_config
from tests.integration.cli import run_cli


def test_unknown_method_name_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; valid methods: .*full.*lora"):
        build_method({"name": "nope"})


def test_unknown_task_family_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown task family 'nope'; valid task families: .*glue"):
        build_task({"family": "nope", "name": "x"})


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['rank'\]; valid options: .*'r'"):
        build_method({"name": "lora", "rank": 8})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.r=0", r"method.r must be an integer >= 1, got 0"),
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


def test_cli_unknown_method_lists_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["method=nope"], monkeypatch) != 0  # Hydra's own message: train.py's entry point, in this process
    err = capsys.readouterr().err
    assert "Could not find 'method/nope'" in err and "lora" in err


def test_cli_offline_dataset_is_one_line_not_a_traceback(tmp_path) -> None:
    """A real ``train.py`` process (docs/bad_inputs.md's rows run in-process): exit 2, one line, no traceback."""
    proc = _cli("task=rte", "model=tiny_bert", f"paths.results_dir={tmp_path}", f"hydra.run.dir={tmp_path}/out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: could not load dataset 'nyu-mll/glue/rte'")
    assert "Traceback" not in proc.stderr


# ---- types and ranges of every config field, from the dataclass annotations -------------------------------------
REQUIRED = {"name": "x", "family": "x", "source": "hf_random", "kind": "encoder", "lr": 1.0}
CONFIGS = [*((f"method '{n}'", METHODS.get(n).config_cls, "method") for n in METHODS.names()),
           *((f"task family '{n}'", TASKS.get(n).config_cls, "task") for n in TASKS.names()),
           ("model", ModelSpec, "model"), ("optim", OptimConfig, "optim"), ("config", RunConfig, "")]


def _options(tp: Any) -> list[Any]:
    """The members of ``X | None`` (or ``[tp]``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _base(tp: Any) -> Any:
    """The annotation without ``Annotated`` and ``| None``."""
    tp = _options(tp)[0]
    return _base(typing.get_args(tp)[0]) if typing.get_origin(tp) is typing.Annotated else tp


def _field_cases() -> list[tuple[str, type, str, str, Any, Any]]:
    """(config, class, prefix, field, its annotation, a value of the wrong type) for every typed field."""
    cases = []
    for where, cls, prefix in CONFIGS:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            base = _base(hints[f.name])
            if base is not Any:
                cases.append((where, cls, prefix, f.name, hints[f.name], 5 if base is str else "abc"))
    return cases


def _range_cases() -> list[tuple[str, type, str, str, Any]]:
    """(config, class, prefix, field, a value just outside its range) for every field annotated with a Range."""
    cases = []
    for where, cls, prefix in CONFIGS:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            tp = _options(hints[f.name])[0]
            ranges = [m for m in typing.get_args(tp)[1:] if isinstance(m, Range)]
            if typing.get_origin(tp) is typing.Annotated and ranges:
                cases.append((where, cls, prefix, f.name, ranges[0].low if ranges[0].low_open else ranges[0].low - 1))
    return cases


@pytest.mark.parametrize(("where", "cls", "prefix", "name", "tp", "bad"), _field_cases(),
                         ids=[f"{c[0]}.{c[3]}" for c in _field_cases()])
def test_every_config_field_rejects_a_wrong_type_in_one_line(where: str, cls: type, prefix: str, name: str,
                                                             tp: Any, bad: Any) -> None:
    values = {k: v for k, v in REQUIRED.items() if k in {f.name for f in dataclasses.fields(cls)}}
    key = f"{prefix}.{name}" if prefix else name
    with pytest.raises(ConfigError, match=rf"^{key} must be .*, got {bad!r}$"):
        build_dataclass(cls, {**values, name: bad}, where, prefix)


def test_range_cases_cover_the_numeric_fields() -> None:
    names = {(c[0], c[3]) for c in _range_cases()}
    assert {("method 'lora'", "r"), ("method 'lora'", "dropout"), ("task family 'glue'", "batch_size"),
            ("config", "seed"), ("optim", "warmup_ratio"), ("method 'capaboost_lora'", "density")} <= names


@pytest.mark.parametrize(("where", "cls", "prefix", "name", "bad"), _range_cases(),
                         ids=[f"{c[0]}.{c[3]}" for c in _range_cases()])
def test_every_ranged_field_rejects_a_value_outside_its_range(where: str, cls: type, prefix: str, name: str,
                                                               bad: Any) -> None:
    values = {k: v for k, v in REQUIRED.items() if k in {f.name for f in dataclasses.fields(cls)}}
    key = f"{prefix}.{name}" if prefix else name
    with pytest.raises(ConfigError, match=rf"^{key} must be .* (>|>=|in) .*, got {bad}$"):
        build_dataclass(cls, {**values, name: bad}, where, prefix)


def test_integral_floats_become_ints_and_bools_are_not_numbers() -> None:
    assert build_method({"name": "lora", "r": 4.0}).config.r == 4
    assert isinstance(build_method({"name": "lora", "r": 4.0}).config.r, int)
    with pytest.raises(ConfigError, match="^method.r must be an integer >= 1, got True$"):
        build_method({"name": "lora", "r": True})
    with pytest.raises(ConfigError, match=r"^method.targets must be a list of strings, got \['q', 3\]$"):
        build_method({"name": "lora", "targets": ["q", 3]})


def test_missing_required_option_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^model 'x': missing option\(s\) \['kind'\]$"):
        build_dataclass(ModelSpec, {"name": "x", "source": "hf_random"}, "model 'x'", "model")



def test_gpu_trainer_checks_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    cfg = compose_config(["trainer=gpu"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    validate(cfg)  # one GPU visible: trainer=gpu (devices: 1) is fine
    with pytest.raises(ConfigError, match=r"^trainer.devices=4 but 1 GPU\(s\) are visible: set trainer.devices=1"):
        validate(compose_config(["trainer=gpu", "trainer.devices=4"]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="^trainer.accelerator=gpu needs a CUDA GPU"):
        validate(cfg)
