"""Houlsby and Pfeiffer bottleneck adapters: the property matrix, plus layer-level checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftlab.errors import ConfigError
from peftlab.methods import build_method
from peftlab.methods.adapters import AdaptedModule, BottleneckAdapter, adapter_modules, remove_adapters
from peftlab.models import ModelSpec, load_backbone
from tests.conftest import compose_config
from tests.methods.properties import MethodProperties

ADAPTER_OR_HEAD = r".*(\.adapter\.(down|up)\.(weight|bias)|classifier\.(weight|bias))"


class TestHoulsbyProperties(MethodProperties):
    method = "adapter_houlsby"
    overrides = ["method.bottleneck=8"]
    trainable_regex = ADAPTER_OR_HEAD
    has_merge = False  # non-linear: nothing to fold into the base weights

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # per adapter on hidden size d, bottleneck m: down (d·m + m) + up (m·d + d) = 2dm + m + d;
        # 2 layers × (attention output + FFN output) adapters; + head (hidden·labels + labels)
        assert len(adapter_modules(model)) == 2 * 2
        hidden, m, labels = 64, 8, 2
        return 4 * (2 * hidden * m + m + hidden) + hidden * labels + labels


class TestPfeifferProperties(MethodProperties):
    method = "adapter_pfeiffer"
    overrides = ["method.bottleneck=4", "method.activation=relu"]
    trainable_regex = ADAPTER_OR_HEAD
    has_merge = False

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        wrapped = adapter_modules(model)
        assert sorted(wrapped) == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
        hidden, m, labels = 64, 4, 2
        return 2 * (2 * hidden * m + m + hidden) + hidden * labels + labels


def _spec_and_base(method: str, *overrides: str) -> tuple[ModelSpec, nn.Module, nn.Module, object]:
    from peftlab.train import validate

    cfg = compose_config(["model=tiny_bert", f"method={method}", *overrides])
    spec, meth, task = validate(cfg)
    torch.manual_seed(0)
    base = load_backbone(spec, task.head, task.num_labels).eval()
    torch.manual_seed(0)
    adapted = meth.apply(load_backbone(spec, task.head, task.num_labels), spec).eval()
    return spec, base, adapted, meth


def test_lora_init_is_exactly_the_base_model() -> None:
    _, base, adapted, _ = _spec_and_base("adapter_pfeiffer", "method.init=lora")
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, base(input_ids=ids).logits, atol=0, rtol=0)


def test_houlsby_init_is_near_identity_but_not_identity() -> None:
    adapter = BottleneckAdapter(64, 8, "relu", "houlsby", 1e-2)
    assert adapter.down.weight.abs().max() <= 2e-2 and adapter.up.weight.abs().max() <= 2e-2  # truncated at 2 std
    h = torch.randn(3, 5, 64)
    out = adapter(h)
    assert not torch.equal(out, h)
    torch.testing.assert_close(out, h, atol=1e-2, rtol=0)


def test_adapter_equation() -> None:
    adapter = BottleneckAdapter(6, 2, "relu", "lora")
    nn.init.normal_(adapter.up.weight)
    h = torch.randn(4, 6)
    expected = h + (torch.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T + adapter.up.bias)
    torch.testing.assert_close(adapter(h), expected)
    assert BottleneckAdapter.num_parameters(6, 2) == sum(p.numel() for p in adapter.parameters())


def test_remove_adapters_restores_base_outputs_and_names() -> None:
    _, base, adapted, _ = _spec_and_base("adapter_houlsby")
    restored = remove_adapters(adapted)
    assert not any(isinstance(m, AdaptedModule) for m in restored.modules())
    assert [n for n, _ in restored.named_parameters()] == [n for n, _ in base.named_parameters()]
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=ids).logits, base(input_ids=ids).logits, atol=0, rtol=0)


def test_llama_placement() -> None:
    from peftlab.train import validate

    cfg = compose_config(["model=tiny_llama", "task=commonsense_synthetic", "method=adapter_houlsby",
                          "method.train_head=false"])
    spec, meth, task = validate(cfg)
    model = meth.apply(load_backbone(spec, task.head, task.num_labels), spec)
    names = sorted(adapter_modules(model))
    assert names == [f"model.layers.{i}.{m}" for i in range(2) for m in ("mlp.down_proj", "self_attn.o_proj")]
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".adapter." not in n)


@pytest.mark.parametrize(
    "override",
    ["method.bottleneck=0", "method.reduction_factor=4", "method.activation=nope", "method.init=xavier",
     "method.targets=[nope]"],
)
def test_bad_config_fails_clearly(override: str) -> None:
    from peftlab.train import validate

    with pytest.raises(ConfigError):
        validate(compose_config(["model=tiny_bert", "method=adapter_houlsby", override]))


def test_reduction_factor() -> None:
    cfg = compose_config(["method=adapter_pfeiffer", "method.bottleneck=null", "method.reduction_factor=24"])
    method = build_method(cfg.method)
    assert method.make_adapter(768).down.out_features == 32  # CapaBoost's PAdapter: 768 / 24
