"""SpIEL: property matrix on tiny BERT, values' gradients = dense gradient at the indices, the official
schedule and reselection rates, drop/grow against an independent computation, Adam moment seeding,
resume state, the budget formula, config errors, and a Lightning run that reselects."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from peftlab.budget import compose, count
from peftlab.errors import ConfigError
from peftlab.methods.spiel import Spiel
from peftlab.methods.spiel.layer import SparseDeltaLinear
from peftlab.models import ModelSpec
from peftlab.train import run
from tests.methods.properties import MethodProperties

HIDDEN, FFN, LAYERS, LABELS = 64, 128, 2, 2  # tiny_bert
TOTAL = 2_033_090  # all parameters of tiny_bert with its 2-label classifier


def expected_deltas(total_tunable: int) -> int:
    # official allocation: int(N · numel / Σ numel) per matrix; q, k, v, o: 64×64, up and down: 64×128, per layer
    sizes = [HIDDEN * HIDDEN] * 4 + [HIDDEN * FFN] * 2
    return LAYERS * sum(int(total_tunable * s / (LAYERS * sum(sizes))) for s in sizes)


class TestSpielProperties(MethodProperties):
    method = "spiel"
    overrides = ["method.lr=1e-2"]
    trainable_regex = r".*(\.spiel_values|classifier\.(weight|bias))"

    def expected_trainable(self, model: nn.Module, spec: ModelSpec) -> int:
        return expected_deltas(int(TOTAL * 0.01)) + HIDDEN * LABELS + LABELS


def small_layer(k: int = 6) -> SparseDeltaLinear:
    torch.manual_seed(0)
    return SparseDeltaLinear(nn.Linear(8, 5), k, torch.Generator().manual_seed(0))


def test_value_gradients_are_the_dense_gradient_at_the_indices() -> None:
    layer = small_layer()
    dense = nn.Linear(8, 5)
    with torch.no_grad():
        layer.spiel_values.normal_()
        dense.weight.copy_(layer.weight + layer.delta_weight())
        dense.bias.copy_(layer.bias)
    seen = []
    layer.grad_hook = seen.append
    x = torch.randn(4, 3, 8)
    layer(x).square().sum().backward()
    dense(x).square().sum().backward()
    torch.testing.assert_close(layer.spiel_values.grad, dense.weight.grad.reshape(-1)[layer.spiel_indices])
    torch.testing.assert_close(seen[0], dense.weight.grad)  # the growth criterion reads dL/dW
    assert layer.weight.grad is None and layer.bias.grad is None
    torch.testing.assert_close(layer.to_linear()(x), dense(x))


def spiel(*overrides: str) -> Spiel:
    from peftlab.methods import build_method

    return build_method(compose(["model=tiny_bert", "method=spiel", *overrides]).method)  # type: ignore[return-value]


def test_official_schedule_and_rates() -> None:
    method = spiel()  # R = 20, A = 5
    method.total_steps = 100
    assert [s for s in range(1, 50) if method.collects(s)] == [1, 2, 3, 4, 5, 20, 21, 22, 23, 24, 25, 40, 41, 42,
                                                                43, 44, 45]
    rates = {s: method.reselection_rate(s) for s in range(1, 101) if method.reselection_rate(s) is not None}
    assert list(rates) == [5, 25, 45, 65, 85]
    assert rates[5] == 1.0 and rates[25] == pytest.approx(0.2 * (1 - 25 / 100))
    assert method.reselection_rate(105) is None  # past T: official end_selection_phase returns
    cosine = spiel("method.reselection_rate_policy=cosine")
    cosine.total_steps = 100
    assert cosine.reselection_rate(5) == pytest.approx(0.2 * (1 + torch.cos(torch.tensor(torch.pi * 0.05)).item()) / 2)


def test_drop_grow_against_an_independent_computation() -> None:
    layer = small_layer(k=6)
    method = spiel()
    method.layers = {"m": layer}
    with torch.no_grad():
        layer.spiel_values.copy_(torch.tensor([0.5, -0.01, 0.3, 0.02, -0.4, 0.001]))
    before = dict(zip(layer.spiel_indices.tolist(), layer.spiel_values.tolist(), strict=True))
    method._set_collection(True)
    grads: list[torch.Tensor] = []
    collect = layer.grad_hook

    def spy(grad: torch.Tensor) -> None:
        grads.append(grad.clone())
        collect(grad)

    layer.grad_hook = spy
    for seed in range(3):
        torch.manual_seed(seed)
        layer(torch.randn(2, 8)).square().sum().backward()
    candidates = torch.topk(grads[0].reshape(-1).abs(), 6).indices  # chosen at the window's first backward
    summed = sum(g.reshape(-1) for g in grads)[candidates]
    moved = method.reselect(0.5)  # drop the 3 smallest |value|
    dropped = sorted(before, key=lambda i: abs(before[i]))[:3]
    remaining = [i for i in before if i not in dropped]
    valid = [(abs(summed[j].item()), candidates[j].item()) for j in range(6) if candidates[j].item() not in remaining]
    grown = [pos for _, pos in sorted(valid, reverse=True)[:3]]
    now = dict(zip(layer.spiel_indices.tolist(), layer.spiel_values.tolist(), strict=True))
    assert set(remaining) | set(grown) <= set(now) <= set(before) | set(grown) and len(now) == 6
    assert all(now[i] == pytest.approx(before[i]) for i in remaining)
    assert all(now[i] == 0.0 for i in grown if i not in before)
    assert moved == len(set(grown) - set(dropped))
    # the grown slots' Adam moments are seeded, bias counter-corrected, at the next optimizer step
    opt = torch.optim.AdamW([layer.spiel_values], lr=0.0, betas=(0.9, 0.999))
    layer.spiel_values.grad = torch.zeros(6)
    opt.step()  # t = 1 now; the pre-hook ran with t = 0 → nothing pending is left
    assert method.pending == {} and method._handle is None


def test_seeded_moments_are_unbiased_after_adam_correction() -> None:
    layer = small_layer(k=4)
    method = spiel()
    opt = torch.optim.AdamW([layer.spiel_values], lr=1e-3, betas=(0.9, 0.99))
    for _ in range(3):  # t = 3
        layer.spiel_values.grad = torch.ones(4)
        opt.step()
    slots, mean, mean_sq = torch.tensor([1, 3]), torch.tensor([0.2, -0.4]), torch.tensor([0.05, 0.2])
    method.pending[id(layer.spiel_values)] = (slots, mean, mean_sq)
    method._handle = register_optimizer_step_pre_hook(method._seed_moments)
    other = torch.optim.AdamW([nn.Parameter(torch.ones(2))])
    other.param_groups[0]["params"][0].grad = torch.ones(2)
    other.step()  # another optimizer of the process: the pending seeds wait for ours
    assert id(layer.spiel_values) in method.pending
    method._seed_moments(opt, (), {})
    state = opt.state[layer.spiel_values]
    torch.testing.assert_close(state["exp_avg"][slots] / (1 - 0.9**3), mean)
    torch.testing.assert_close(state["exp_avg_sq"][slots] / (1 - 0.99**3), mean_sq)
    assert method._handle is None


def test_budget_formula_llama_7b() -> None:
    # official: N = int(density · all params) = int(0.01 · 6,738,415,616), spread over q,k,v,o,gate,up,down by size
    b = count(compose(["model=llama_7b", "task=commonsense_synthetic", "method=spiel",
                       "method.targets=[q,k,v,o,gate,up,down]"]))
    n = int(6_738_415_616 * 0.01)
    weights = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert b.trainable == 32 * (4 * int(n * 4096 * 4096 / weights) + 3 * int(n * 4096 * 11008 / weights))
    assert b.trainable == b.extra["deltas"] == 67_384_032


def test_budget_knob_num_tunable_weights() -> None:
    b = count(compose(["model=tiny_bert", "method=spiel", "method.num_tunable_weights=3000",
                       "method.train_head=false"]))
    assert b.trainable == expected_deltas(3000)


@pytest.mark.parametrize("bad", ["method.density=0", "method.selection_accumulation_steps=19",
                                 "method.reselection_rate_policy=step", "method.num_tunable_weights=10000000"])
def test_bad_options_fail_before_training(bad: str) -> None:
    with pytest.raises(ConfigError, match="density|selection_accumulation|policy|exceed"):
        count(compose(["model=tiny_bert", "method=spiel", bad]))


def test_lightning_run_reselects_and_resume_state_round_trips(cfg_factory, tmp_path: Path) -> None:
    # 64 examples / batch 16 × 3 epochs = 12 steps: windows 1-2 and 4-6, reselections after steps 2 and 6
    cfg = cfg_factory("method=spiel", "method.reselection_steps=4", "method.selection_accumulation_steps=2",
                      "trainer.max_epochs=3", "test=false")
    moves: list[int] = []
    original = Spiel.reselect

    def spy(self: Spiel, p: float) -> int:
        moves.append(original(self, p))
        return moves[-1]

    Spiel.reselect = spy  # type: ignore[method-assign]
    try:
        run(cfg)
    finally:
        Spiel.reselect = original  # type: ignore[method-assign]
    assert len(moves) == 3 and moves[0] > 0  # steps 2, 6, 10; the first replaces (nearly) all
    (record,) = (tmp_path / "runs").rglob("*.json")
    assert json.loads(record.read_text())["status"] == "complete"
    method = spiel()
    method.step, method.candidates = 7, {"x": [torch.arange(3), torch.ones(3), torch.ones(3), torch.ones(())]}
    json.dumps(method.method_state())  # plain JSON: run records and export.json hold it (tensors go to resume_state)
    fresh = spiel()
    fresh.load_method_state(nn.Module(), copy.deepcopy(method.method_state()))
    fresh.load_resume_state(nn.Module(), copy.deepcopy(method.resume_state()))
    assert fresh.step == 7 and torch.equal(fresh.candidates["x"][0], torch.arange(3))
    assert json.loads(json.dumps(method.method_state())) == {"step": 7}  # JSON-ready: records and exports hold it
