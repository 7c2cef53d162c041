"""The budget calculator: equals what a training run records, works offline on the meta device, solves for
a setting that hits a target budget."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from peftlab.budget import compose, count, main, parse_count, solve
from peftlab.methods.base import count_parameters
from peftlab.methods.lora import Lora
from peftlab.train import build, run
from tests.conftest import TINY

METHODS = ["full", "lora", "dora", "adalora", "ia3", "bitfit", "adapter_houlsby", "adapter_pfeiffer"]


def test_equals_the_recorded_run(cfg_factory, tmp_path: Path) -> None:
    cfg = cfg_factory("method=adapter_houlsby", "task.num_train=16", "task.num_validation=16", "test=false")
    run(cfg)
    (record_file,) = (tmp_path / "runs").rglob("*.json")
    params = json.loads(record_file.read_text())["params"]
    budget = count(compose([*TINY, "method=adapter_houlsby"]))
    assert (budget.trainable, budget.total) == (params["trainable"], params["total"])


@pytest.mark.parametrize("method", METHODS)
def test_equals_the_built_run_model(cfg_factory, method: str) -> None:
    # train.build is where the record's params come from (count_parameters after method.apply)
    cfg = cfg_factory(f"method={method}", "task.num_train=16", "task.num_validation=16")
    module, _, _ = build(cfg)
    budget = count(compose([*TINY, f"method={method}"]))
    assert (budget.trainable, budget.total) == count_parameters(module.model)


def test_model_without_dims_reads_its_config_json(cfg_factory) -> None:
    # minilm keeps no `config:` dims: the budget builds it from the shipped config.json
    module, _, _ = build(cfg_factory("model=minilm", "method=lora", "task.num_train=16", "task.num_validation=16"))
    budget = count(compose(["model=minilm", "method=lora"]))
    assert (budget.trainable, budget.total) == count_parameters(module.model)


def test_llama_7b_lora_r32_offline_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the budget calculator touched the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    budget = count(compose(["model=llama_7b", "task=commonsense", "method=lora", "method.r=32",
                            "method.targets=[q,k,v,up,down]"]))
    # 32 layers × r·[3 × (4096 + 4096) (q, k, v) + 2 × (4096 + 11008) (up, down)]
    assert budget.trainable == 32 * 32 * (3 * (4096 + 4096) + 2 * (4096 + 11008)) == 56_098_816
    assert budget.base_total == 6_738_415_616  # LLaMA-7B: 32000·4096·2 + 32·(4·4096² + 3·4096·11008 + 2·4096) + 4096
    assert round(budget.pct_of_base, 2) == 0.83  # the LLM-Adapters/DoRA tables' "0.83%"
    assert budget.total == budget.base_total + budget.trainable


def test_planned_trainable_is_used_when_defined(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def planned(self: Lora, model: object, spec: object) -> int:
        seen["params"] = count_parameters(model)[1]  # called on the unmodified backbone
        return 1234

    monkeypatch.setattr(Lora, "planned_trainable", planned, raising=False)
    budget = count(compose([*TINY, "method=lora"]))
    assert budget.trainable == 1234 and seen["params"] == budget.base_total


def test_solve_finds_the_lora_rank_of_a_budget() -> None:
    overrides = [*TINY, "method=lora", "method.train_head=false", "method.targets=[q,v]"]
    target = 2 * 2 * 6 * (64 + 64)  # layers × targets × r=6 × (d_in + d_out)
    (best, budget), *_ = solve(overrides, "method.r", target)
    assert best == 6 and budget.trainable == target
    brackets = solve(overrides, "method.r", target + 1)  # between r=6 and r=7
    assert sorted(v for v, _ in brackets) == [6, 7]


def test_cli_match_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "method=adapter_pfeiffer", "method.train_head=false", "--solve", "method.bottleneck",
                 "--match", "method=lora", "method.r=8", "method.train_head=false"]) == 0
    out = capsys.readouterr().out
    assert "target: model=tiny_bert method=lora" in out and "method.bottleneck=" in out
    assert main([*TINY, "method=lora", "--target", "1M"]) == 2
    assert main([*TINY, "method=lora", "method.r=0"]) == 2
    assert "method.r" in capsys.readouterr().err


def test_cli_prints_the_method_alone_beside_the_trained_head(capsys: pytest.CaptureFixture[str]) -> None:
    # RoBERTa-base, LoRA r=8 on q, v: 12 layers × 2 × 8·(768 + 768) = 294,912 (the LoRA paper's "0.3M" #Params), plus
    # the classification head (dense 768·768 + 768, out_proj 768·2 + 2) when it trains
    assert main(["model=roberta_base", "method=lora", "method.r=8"]) == 0
    assert "trainable 887,042 / total" in (out := capsys.readouterr().out)
    assert "the method alone (head excluded, the papers' #Params): 294,912 (0.2366% of the base model)" in out


def test_parse_count() -> None:
    assert parse_count("56.1M", 0) == 56.1e6 and parse_count("300k", 0) == 3e5 and parse_count("1,200", 0) == 1200
    assert parse_count("0.5%", 1000) == 5
    with pytest.raises(ValueError, match="cannot read"):
        parse_count("lots", 10)


def test_capaboost_reports_stored_and_expected_gradient_receiving_counts() -> None:
    # DeBERTaV3-base, q and v (12 layers × 2 × r·(768 + 768)), head frozen: stored = plain LoRA r=8
    lora = count(compose(["model=deberta_v3_base", "method=lora", "method.train_head=false"]))
    boost = count(compose(["model=deberta_v3_base", "method=capaboost_lora", "method.train_head=false"]))
    masked = 12 * 2 * 8 * (768 + 768)
    assert boost.trainable == boost.extra["stored"] == lora.trainable == masked
    # d = 2 copies at density 0.5 reach 1 - (1 - 0.5)^2 = 75% of the masked weights (in expectation)
    assert boost.extra["receives_gradient_expected"] == round(0.75 * masked)


def test_cli_prints_no_third_party_warning(capsys: pytest.CaptureFixture[str],
                                           recwarn: pytest.WarningsRecorder) -> None:
    """peft wrapping the model made transformers warn ``is_gradient_checkpointing is deprecated`` before the answer;
    the calculator installs the run's filter of known harmless messages (peftlab.logs)."""
    assert main([*TINY, "method=lora"]) == 0
    hidden_by_python = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [f"{w.category.__name__}: {w.message}" for w in recwarn if not issubclass(w.category, hidden_by_python)]
    assert not shown and "trainable" in capsys.readouterr().out
