"""SSF: property matrix (tiny BERT), exact merge on a timm ViT, where the scale/shift sit, count formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftlab.budget import compose, count
from peftlab.errors import PeftlabError
from peftlab.methods.base import count_parameters
from peftlab.methods.ssf import ScaleShift
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import validate
from tests.conftest import compose_config
from tests.methods.properties import MethodProperties

NO_DROPOUT = ["+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]
D, FF, LAYERS, LABELS = 64, 128, 2, 2  # tiny_bert: hidden 64, intermediate 128, 2 layers; pair task: 2 labels


def bert_formula(train_head: bool = True) -> int:
    # 2 × channels: embeddings LN + per layer q, k, v, o, attention LN, up, down, output LN (+ classifier)
    per_layer = 4 * D + D + FF + D + D
    return 2 * (D + LAYERS * per_layer) + (D * LABELS + LABELS if train_head else 0)


class TestSsfProperties(MethodProperties):
    method = "ssf"
    # random tiny BERT (near-identical pooled features): dropout noise off and a small lr for a steady descent
    overrides = ["method.lr=1e-3", *NO_DROPOUT]
    trainable_regex = r".*\.ssf_(scale|shift)|classifier\.(weight|bias)"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return bert_formula()


def vit(*overrides: str) -> tuple[nn.Module, object]:
    cfg = compose_config(["model=tiny_vit", "task=digits", "method=ssf", *overrides])
    spec, method, task = validate(cfg)
    torch.manual_seed(0)
    return method.apply(load_backbone(spec, task.head, task.num_labels), spec), method


def test_vit_sites_follow_the_official_code() -> None:
    model, _ = vit()
    sites = {n for n, m in model.named_modules() if isinstance(m, ScaleShift)}
    per_block = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"}
    assert sites == {"patch_embed.proj", "norm"} | {f"blocks.{i}.{s}" for i in range(2) for s in per_block}
    assert model.get_submodule("blocks.0.attn.qkv").ssf_scale.shape == (3 * D,)  # fused qkv: 3C channels
    scale = torch.cat([m.ssf_scale.detach() for m in model.modules() if isinstance(m, ScaleShift)])
    assert abs(scale.mean().item() - 1) < 0.01 and 0.01 < scale.std().item() < 0.03  # N(1, 0.02²)


def test_vit_merge_is_exact_and_restores_the_base_architecture() -> None:
    model, method = vit()
    with torch.no_grad():  # trained-looking γ, β far from the init so the fold is really exercised
        for m in model.modules():
            if isinstance(m, ScaleShift):
                m.ssf_scale.normal_(1.0, 0.5)
                m.ssf_shift.normal_(0.0, 0.5)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        merged = method.merge(model)
        got = merged(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # fp32 re-association of γ(Wx+b)+β
    assert not any(isinstance(m, ScaleShift) for m in merged.modules())
    cfg = compose_config(["model=tiny_vit", "task=digits", "method=ssf"])
    spec, _, task = validate(cfg)
    base = load_backbone(spec, task.head, task.num_labels)
    assert count_parameters(merged)[1] == count_parameters(base)[1]
    assert merged.state_dict().keys() == base.state_dict().keys()


@pytest.mark.parametrize(("model_name", "extra"), [("tiny_bert", []), ("tiny_vit", ["task=digits"]),
                                                    ("tiny_bert", ["method.norms=false", "method.targets=[q,v]"])])
def test_budget_calculator_equals_formula(model_name: str, extra: list[str]) -> None:
    budget = count(compose([f"model={model_name}", "method=ssf", *extra]))
    if model_name == "tiny_vit":
        # patch embed, final norm, per block norm1, qkv (3C), proj, norm2, fc1 (2C: mlp_ratio 2), fc2; 10 classes
        expected = 2 * (D + D + LAYERS * (D + 3 * D + D + D + 2 * D + D)) + D * 10 + 10
    elif extra:
        expected = 2 * LAYERS * 2 * D + D * LABELS + LABELS
    else:
        expected = bert_formula()
    assert budget.trainable == expected


def test_llama_merge_refuses_an_unfoldable_norm_shift() -> None:
    cfg = compose_config(["model=tiny_llama", "task=commonsense_synthetic", "method=ssf"])
    spec, method, task = validate(cfg)
    model = method.apply(load_backbone(spec, task.head, task.num_labels), spec)
    with pytest.raises(PeftlabError, match="norms=false"):
        method.merge(model)
