"""Every shipped config composes and validates (before any data or weights load)."""

from __future__ import annotations

import dataclasses

import pytest

from peftlab.errors import ConfigError
from peftlab.methods.base import count_parameters
from peftlab.models import KINDS, ModelSpec
from peftlab.run_config import RunConfig
from peftlab.tasks import build_task
from peftlab.train import build_model, validate_config
from tests.conftest import CONF, compose_config


def _options(group: str) -> list[str]:
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@pytest.mark.parametrize("method", _options("method"))
def test_every_method_config_validates(method: str) -> None:
    spec, built, _ = validate_config(compose_config([f"method={method}"]))
    assert built.name == compose_config([f"method={method}"]).method.name


TASK_OF_KIND = {"encoder": "synthetic_pairs", "decoder": "commonsense_synthetic", "vision": "digits"}
MODEL_OF_KIND = {"encoder": "minilm", "decoder": "tiny_llama", "vision": "tiny_vit"}


def _kind(group: str, option: str) -> str:
    """The model kind a task needs, or a model's kind (each task is paired with a model that serves it)."""
    cfg = compose_config([f"{group}={option}", "method=full"])
    if group == "model":
        return cfg.model.kind
    head = build_task(cfg.task).head
    return next(kind for kind, (heads, _) in KINDS.items() if head in heads)


@pytest.mark.parametrize("task", _options("task"))
def test_every_task_config_validates(task: str) -> None:
    model = MODEL_OF_KIND[_kind("task", task)]
    _, _, built = validate_config(compose_config([f"task={task}", f"model={model}", "method=full"]))
    assert built.main_metric


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_config_validates(model: str) -> None:
    task = TASK_OF_KIND[_kind("model", model)]
    spec, _, _ = validate_config(compose_config([f"model={model}", f"task={task}", "method=full"]))
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


# ---- method defaults resolve on every model (issue 16: `method=capaboost_lora task=digits model=tiny_vit`) ----
@pytest.mark.parametrize("model", ["tiny_llama", "tiny_vit", "vit_b16_in21k"])
@pytest.mark.parametrize("method", _options("method"))
def test_method_default_targets_resolve_on_every_model(method: str, model: str) -> None:
    kind = compose_config([f"model={model}"]).model.kind
    validate_config(compose_config([f"method={method}", f"model={model}", f"task={TASK_OF_KIND[kind]}"]))


def test_fused_qkv_takes_the_q_k_v_targets() -> None:
    spec = ModelSpec(**compose_config(["model=vit_b16_in21k"]).model)
    assert spec.resolve_targets(["q", "v"]) == ["qkv"]
    assert spec.resolve_targets(["q", "k", "v", "o", "up", "down"]) == ["qkv", "o", "up", "down"]
    assert spec.resolve_targets(["qkv"]) == ["qkv"]
    tiny_bert = ModelSpec(**compose_config(["model=tiny_bert"]).model)
    assert tiny_bert.resolve_targets(["q", "v"]) == ["q", "v"]
    with pytest.raises(ConfigError, match=r"unknown target\(s\) \['qkv'\] .* \(e.g. method.targets=\[q,v\]\)$"):
        tiny_bert.resolve_targets(["qkv", "q", "v"])


def test_lora_default_on_a_vit_is_one_pair_on_the_fused_qkv(tmp_path, capsys) -> None:
    """NOAH's VTAB LoRA: one pair on attn.qkv, r·(d + 3d) per block = LoRA r on separate q and v, 2·r·(d + d)."""
    cfg = compose_config(["model=tiny_vit", "task=digits", "method=lora", "method.train_head=false"], tmp_path)
    model, *_ = build_model(cfg)
    assert "computes q, k, v in one Linear (qkv): method.targets ['q', 'v'] adapt ['qkv']" in capsys.readouterr().out
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all(".attn.qkv.lora_" in n for n in lora), lora
    r, d, blocks = cfg.method.r, cfg.model.config.embed_dim, cfg.model.config.depth
    assert count_parameters(model)[0] == blocks * r * (d + 3 * d) == blocks * 2 * r * (d + d)


def test_capaboost_lora_runs_with_its_defaults_on_a_vit(tmp_path) -> None:
    """The issue's command, validated and applied: `method=capaboost_lora task=digits model=tiny_vit`."""
    model, method, *_ = build_model(compose_config(["method=capaboost_lora", "task=digits", "model=tiny_vit"],
                                                   tmp_path))
    assert method.name == "capaboost_lora"
    assert any(n.endswith("attn.qkv") and type(m).__name__ != "Linear" for n, m in model.named_modules())


def test_every_top_level_key_is_a_run_config_field() -> None:
    """A key added to conf/config.yaml or an experiment file needs a typed field in peftlab.run_config.RunConfig."""
    keys = set(compose_config([]).keys())
    for experiment in _options("experiment"):
        keys |= set(compose_config([f"experiment={experiment}"]).keys())
    assert keys <= {f.name for f in dataclasses.fields(RunConfig)}
