"""Heads a task adds are trained by every method (``train_head``, default true): each model config's ``head``
must name every module a task head adds on top of the pretrained backbone, e.g. LLaMA's ``score`` for sequence
classification (before this check, LLaMA listed none, so SMT froze ``score`` after its switch)."""

from __future__ import annotations

import pytest

from peftlab.budget import compose, meta_backbone
from peftlab.config_utils import build_dataclass
from peftlab.models import ModelSpec
from tests.conftest import CONF

HF_MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if "source: timm" not in p.read_text())


@pytest.mark.parametrize("head", ["seq_cls", "qa_span"])
@pytest.mark.parametrize("model", HF_MODELS)
def test_model_config_names_every_module_a_task_head_adds(model: str, head: str) -> None:
    # the spec alone: the run recipe pairs the decoders with causal-LM tasks only, but their configs must still
    # name the heads transformers adds (e.g. for LlamaForSequenceClassification)
    spec = build_dataclass(ModelSpec, compose([f"model={model}"]).model, f"model '{model}'", "model")
    try:
        backbone = meta_backbone(spec, head, 2)
    except ValueError as err:  # transformers has no such head for this architecture
        pytest.skip(f"{model} has no {head} model: {err}")
    base = backbone.base_model_prefix
    added = [name for name, child in backbone.named_children()
             if name != base and any(True for _ in child.parameters())]
    assert added, f"{model}: no {head} head found"
    assert all(spec.is_head(name) for name in added), f"{model} {head}: conf/model/{model}.yaml head misses {added}"
