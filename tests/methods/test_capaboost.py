"""CapaBoost (capaboost_lora, capaboost_adapter): the property matrix, equality with peft LoRA at d = 1 and
density 1, rank of the merged update, masks, gradients (against an emulation of the official tied copies),
counts, exact save/load and config errors."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

from peftlab.errors import ConfigError
from peftlab.methods import build_method
from peftlab.methods.adapters import adapter_modules
from peftlab.methods.base import count_parameters
from peftlab.methods.capaboost import CapaBoostLoraLinear, MaskedTiedLinear
from peftlab.methods.capaboost.masks import draw_masks, union_fraction
from peftlab.models import ModelSpec, load_backbone
from peftlab.train import validate
from tests.conftest import compose_config
from tests.methods.properties import MethodProperties

HIDDEN, LABELS, LAYERS = 64, 2, 2  # conf/model/tiny_bert.yaml; synthetic_pairs has 2 labels
HEAD = HIDDEN * LABELS + LABELS


class TestCapaBoostLoraProperties(MethodProperties):
    method = "capaboost_lora"
    overrides = ["method.r=4"]
    trainable_regex = r".*(capaboost_[AB]\.weight|classifier\.(weight|bias))"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # same stored parameters as LoRA: r·(d_in + d_out) per target (q, v of 2 layers) + head
        return LAYERS * 2 * 4 * (HIDDEN + HIDDEN) + HEAD


class TestCapaBoostLora24Properties(TestCapaBoostLoraProperties):
    overrides = ["method.r=4", "method.mask_pattern='2:4'", "method.d=3"]


class TestCapaBoostAdapterProperties(MethodProperties):
    method = "capaboost_adapter"
    overrides = ["method.bottleneck=8", "method.placement=houlsby"]
    trainable_regex = r".*(\.adapter\.(down|up)\.(weight|bias)|classifier\.(weight|bias))"
    has_merge = False  # non-linear

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        # same as a plain adapter: 2·d·m + m + d per adapter; houlsby: 2 per layer
        assert len(adapter_modules(model)) == LAYERS * 2
        return LAYERS * 2 * (2 * HIDDEN * 8 + 8 + HIDDEN) + HEAD


# ---------------------------------------------------------------- helpers
def build(*overrides: str, method: str = "capaboost_lora", seed: int = 0) -> tuple[nn.Module, object, ModelSpec]:
    cfg = compose_config(["model=tiny_bert", f"method={method}", *overrides])
    spec, m, task = validate(cfg)
    torch.manual_seed(seed)
    return m.apply(load_backbone(spec, task.head, task.num_labels), spec), m, spec


def layers(model: nn.Module) -> list[CapaBoostLoraLinear]:
    return [m for m in model.modules() if isinstance(m, CapaBoostLoraLinear)]


def randomise(model: nn.Module, seed: int = 1) -> None:
    """Non-zero B (A already random) so the branch matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers(model):
            for w in (layer.capaboost_A.weight, layer.capaboost_B.weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)


def inputs(batch_size: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"input_ids": torch.randint(100, 2000, (batch_size, length), generator=g)}


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


# ---------------------------------------------------------------- equivalences
def test_d1_density1_equals_peft_lora() -> None:
    model, _, spec = build("method.r=4", "method.d=1", "method.density=1.0")
    randomise(model)
    torch.manual_seed(0)
    base = load_backbone(spec, "seq_cls", LABELS)
    direct = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"],
                                                       modules_to_save=["classifier"]))
    state = direct.state_dict()
    for name, layer in ((n, m) for n, m in model.named_modules() if isinstance(m, CapaBoostLoraLinear)):
        state[f"base_model.model.{name}.lora_A.default.weight"] = layer.capaboost_A.weight.detach()
        state[f"base_model.model.{name}.lora_B.default.weight"] = layer.capaboost_B.weight.detach()
    direct.load_state_dict(state)
    # same ops in the same order (a mask of ones multiplies exactly): bitwise equal
    torch.testing.assert_close(logits(direct, inputs()), logits(model, inputs()), atol=0, rtol=0)


@pytest.mark.parametrize("d", [2, 3])
def test_merged_update_rank_exceeds_r(d: int) -> None:
    r = 4
    model, _, _ = build(f"method.r={r}", f"method.d={d}")
    randomise(model)
    for layer in layers(model):
        rank = int(torch.linalg.matrix_rank(layer.delta_weight().detach()))  # fp32 tolerance: rounding is not rank
        assert r < rank <= min(d * r, HIDDEN), rank


def test_without_masks_rank_stays_r() -> None:
    # d copies with density 1 are d identical copies: the update is d·BA, rank r; the masks create the rank
    model, _, _ = build("method.r=4", "method.d=3", "method.density=1.0")
    randomise(model)
    assert all(int(torch.linalg.matrix_rank(m.delta_weight().detach())) == 4 for m in layers(model))


def test_stacked_form_equals_naive_sum_over_copies() -> None:
    model, _, _ = build("method.r=4", "method.d=3")
    randomise(model)
    layer = layers(model)[0]
    x = torch.randn(5, HIDDEN)
    a, b = layer.capaboost_A, layer.capaboost_B
    naive = sum((x @ (a.weight * ma).T) @ (b.weight * mb).T for ma, mb in zip(a.copy_masks(), b.copy_masks(),
                                                                               strict=True))
    torch.testing.assert_close(layer(x) - layer.base_layer(x), layer.scaling * naive, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- masks
def test_masks_deterministic_distinct_and_exact_density() -> None:
    shape = (16, 64)
    m1, m2 = draw_masks(shape, 3, 0.5, "random", seed=7), draw_masks(shape, 3, 0.5, "random", seed=7)
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, draw_masks(shape, 3, 0.5, "random", seed=8))
    assert all(not torch.equal(m1[i], m1[j]) for i in range(3) for j in range(i))
    assert all(int(m.sum()) == int(16 * 64 * 0.5) for m in m1)  # exact count per copy, as the official code
    assert int(draw_masks((5, 7), 2, 0.3, "random", seed=0)[0].sum()) == int(35 * 0.3)  # truncation


def test_union_fraction_within_sampling_tolerance() -> None:
    masks = draw_masks((256, 256), 2, 0.5, "random", seed=3)
    frac = masks.any(0).float().mean().item()
    # hypergeometric-like overlap; std of the fraction ≈ sqrt(p(1-p)/n) ≈ 0.0017 for n = 65536
    assert abs(frac - union_fraction(0.5, 2)) < 0.01, frac


def test_n_of_m_masks() -> None:
    masks = draw_masks((8, 16), 2, 0.5, "2:4", seed=0)
    groups = masks.view(2, 8, 4, 4).sum(-1)
    assert torch.all(groups == 2)
    assert not torch.equal(masks[0], masks[1])


def test_masks_follow_the_run_seed_and_are_recorded() -> None:
    cfg = compose_config(["model=tiny_bert", "method=capaboost_lora", "seed=5"])
    assert cfg.method.mask_seed == 5
    a, _, _ = build("method.mask_seed=5")
    b, _, _ = build("method.mask_seed=5", seed=1)  # other init seed: same masks
    c, _, _ = build("method.mask_seed=6")
    masks = [[m.mask for m in x.modules() if isinstance(m, MaskedTiedLinear)] for x in (a, b, c)]
    assert all(torch.equal(p, q) for p, q in zip(masks[0], masks[1], strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(masks[0], masks[2], strict=True))


# ---------------------------------------------------------------- gradients and counts
def test_gradient_equals_official_tied_copies_and_is_zero_off_the_masks() -> None:
    model, _, _ = build("method.r=4", "method.d=3", "method.train_head=false")
    randomise(model)
    layer = layers(model)[0].double()  # float64: the two summation orders agree to ~1e-12
    a, b = layer.capaboost_A, layer.capaboost_B
    x = torch.randn(6, HIDDEN, dtype=torch.float64)
    (layer(x) ** 2).sum().backward()
    # official: d physical copies W_i = W ⊙ M_i, each gets its own gradient; mask it, sum the copies
    copies_a = [(a.weight * m).detach().requires_grad_() for m in a.copy_masks()]
    copies_b = [(b.weight * m).detach().requires_grad_() for m in b.copy_masks()]
    out = layer.base_layer(x) + layer.scaling * sum((x @ ca.T) @ cb.T for ca, cb in zip(copies_a, copies_b,
                                                                                          strict=True))
    (out ** 2).sum().backward()
    for tied, copies in ((a, copies_a), (b, copies_b)):
        official = sum(m * c.grad for m, c in zip(tied.copy_masks(), copies, strict=True))
        torch.testing.assert_close(tied.weight.grad, official, atol=1e-9, rtol=1e-9)
        assert torch.all(tied.weight.grad[~tied.union_mask()] == 0)
        assert tied.weight.grad[tied.union_mask()].abs().sum() > 0
    assert layer.base_layer.weight.grad is None


def test_only_shared_weights_train() -> None:
    model, _, _ = build("method.train_head=false")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(("capaboost_A.weight", "capaboost_B.weight")) for n in names)
    assert not any(b.requires_grad for b in model.buffers())


def test_counts_stored_and_receiving_gradient() -> None:
    cfg = compose_config(["model=tiny_bert", "method=capaboost_lora"])
    spec, method, task = validate(cfg)
    meta = load_backbone(spec, task.head, task.num_labels)
    planned = method.planned_trainable(meta, spec)
    model = method.apply(meta, spec)
    counts = method.extra_counts(model)
    assert counts["stored"] == planned == count_parameters(model)[0]
    assert counts["stored"] - HEAD == LAYERS * 2 * 8 * (HIDDEN + HIDDEN)  # plain LoRA r = 8
    frac = counts["masked_weights_receiving_gradient"] / counts["masked_weights"]
    assert abs(frac - 0.75) < 0.03, frac  # 1 − (1 − 0.5)^2
    assert counts["receives_gradient"] == counts["masked_weights_receiving_gradient"] + HEAD


def test_adapter_counts_and_planned() -> None:
    cfg = compose_config(["model=tiny_bert", "method=capaboost_adapter"])
    spec, method, task = validate(cfg)
    model = load_backbone(spec, task.head, task.num_labels)
    planned = method.planned_trainable(model, spec)
    model = method.apply(model, spec)
    counts = method.extra_counts(model)
    assert counts["stored"] == planned == count_parameters(model)[0]
    assert counts["receives_gradient"] < counts["stored"]


# ---------------------------------------------------------------- persistence and merge
def test_reload_with_another_mask_seed_restores_the_saved_masks() -> None:
    model, method, _ = build("method.mask_seed=1")
    randomise(model)
    expected = logits(model, inputs())
    fresh, fresh_method, _ = build("method.mask_seed=2")
    assert not torch.allclose(logits(fresh, inputs()), expected)
    fresh_method.load_adapter_state_dict(fresh, method.adapter_state_dict(model))
    torch.testing.assert_close(logits(fresh, inputs()), expected, atol=0, rtol=0)


def test_method_state_mismatch_is_a_config_error() -> None:
    _, method, _ = build("method.d=2")
    fresh, other, _ = build("method.d=3")
    with pytest.raises(ConfigError, match="trained with CapaBoost"):
        other.load_method_state(fresh, method.method_state())


def test_merge_removes_every_capaboost_module() -> None:
    model, method, _ = build()
    randomise(model)
    expected = logits(model, inputs())
    merged = method.merge(model)
    assert not layers(merged) and not [b for n, b in merged.named_buffers() if n.endswith(".mask")]
    torch.testing.assert_close(logits(merged, inputs()), expected, atol=1e-5, rtol=0)


def test_adapter_merge_is_refused() -> None:
    model, method, _ = build(method="capaboost_adapter")
    with pytest.raises(NotImplementedError, match="non-linear"):
        method.merge(model)


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize(("override", "message"), [
    ("method.d=0", "method.d"),
    ("method.density=1.5", "method.density"),
    ("method.density=0", "method.density"),
    ("method.mask_pattern=blocks", "method.mask_pattern"),
    ("method.mask_pattern='2:4'", "density=0.5"),
    ("method.r=0", "method.r"),
])
def test_bad_lora_config(override: str, message: str) -> None:
    extra = ["method.density=0.3"] if "2:4" in override else []
    with pytest.raises(ConfigError, match=message):
        build_method(compose_config(["method=capaboost_lora", override, *extra]).method)


def test_bad_adapter_config() -> None:
    with pytest.raises(ConfigError, match="placement"):
        build_method(compose_config(["method=capaboost_adapter", "method.placement=middle"]).method)
    with pytest.raises(ConfigError, match="placement=custom"):
        build_method(compose_config(["method=capaboost_adapter", "method.targets=[q]"]).method)
    m = build_method(compose_config(["method=capaboost_adapter", "method.placement=houlsby"]).method)
    assert m.config.targets == ["o", "down"] and m.config.activation == "swish"


def test_n_of_m_needs_divisible_last_dim() -> None:
    with pytest.raises(ConfigError, match="multiple of 4"):
        build("method.mask_pattern='2:4'", "method.r=6")  # B is (64 × 6): rows of 6 are not 4-groups
