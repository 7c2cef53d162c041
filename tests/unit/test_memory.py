"""The memory model (peftlab.memory): within 5% of the bytes ``scripts/bench_methods.py`` measures in the same
run for every method it benchmarks, closed-form states, the precision layouts, and the ``--memory`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from peftlab.budget import compose, main
from peftlab.errors import ConfigError
from peftlab.memory import FP32, MemorySetting, predict, predict_config
from peftlab.methods.base import count_parameters
from peftlab.train import validate_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_methods  # noqa: E402

# 3 layers so that LISA (2 active blocks) differs from full FT; 2 KV heads of 4 (grouped-query attention)
TINY = ["--layers", "3", "--hidden", "128", "--heads", "4", "--kv-heads", "2", "--vocab", "500", "--batch", "2",
        "--seq", "32", "--steps", "1"]
PRECISIONS = ("32-true", "bf16-mixed")


@pytest.fixture(scope="module", params=PRECISIONS)
def bench(request: pytest.FixtureRequest) -> tuple[Any, list[dict[str, Any]]]:
    args = bench_methods.parse_args([*TINY, "--precision", request.param])
    return args, bench_methods.run(args)


def test_prediction_within_5_percent_of_the_measured_bytes_for_every_method(bench: tuple[Any, list]) -> None:
    args, rows = bench
    expected = {s["label"] for s in bench_methods.SETTINGS if s["method"] in ({"full", "lora", *args.only}
                                                                              if args.only else {s["method"]})}
    assert {r["label"] for r in rows} >= expected
    errors = {r["label"]: r["predicted"]["tensor_bytes"] / r["memory_total_bytes"] - 1 for r in rows}
    assert all(abs(e) <= 0.05 for e in errors.values()), errors
    # the kinds agree too: states (params + buffers + grads + optimizer + method state) and activations apart
    for r in rows:
        m, p = r["memory_bytes"], r["predicted"]["split_bytes"]
        assert p["activations"] == pytest.approx(m["activations"], rel=0.05), r["label"]
        assert p["gradients"] == pytest.approx(m["grads"], rel=0.05, abs=1024), r["label"]


def test_the_check_can_fail(bench: tuple[Any, list]) -> None:
    # the same LoRA row predicted for a batch twice as large is far outside 5%: the agreement is not built in
    args, rows = bench
    lora = next(r for r in rows if r["method"] == "lora")
    spec = bench_methods.model_spec(args)
    setting = MemorySetting(batch=2 * args.batch, seq=args.seq, precision=args.precision, device="cpu")
    pred = predict(spec, bench_methods.method_node(bench_methods.SETTINGS[1], {}), "causal_lm", None, setting,
                   lambda m, b: m(**b).loss,
                   make_batch=lambda m: {"input_ids": torch.zeros(2 * args.batch, args.seq, dtype=torch.long),
                                         "labels": torch.zeros(2 * args.batch, args.seq, dtype=torch.long)})
    assert pred.phases["train"].tensor_bytes() / lora["memory_total_bytes"] > 1.2


def _tiny(method: str, *overrides: str, **setting: Any) -> tuple[Any, Any]:
    cfg = compose(["model=tiny_llama", "task=commonsense_synthetic", f"method={method}", *overrides])
    return cfg, predict_config(cfg, MemorySetting(**{"batch": 2, "seq": 16, **setting}))


def test_states_are_counts_times_the_precision_rule_bytes() -> None:
    # bf16-mixed on a bf16 model: frozen weights 2 bytes, trained ones fp32 with fp32 grads and two fp32 moments
    cfg, pred = _tiny("lora", "+model.dtype=bfloat16")
    spec, method, task = validate_config(cfg)
    with torch.device("meta"):
        from peftlab.budget import meta_backbone

        model = method.apply(meta_backbone(spec, task.head, task.num_labels), spec)
    trained, total = count_parameters(model)
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    s = pred.phases["train"]
    assert s.trained_params == s.gradients == FP32 * trained
    assert s.optimizer_state == 2 * FP32 * trained + FP32 * tensors
    assert s.frozen_weights - sum(b.numel() * b.itemsize for b in model.buffers()) == 2 * (total - trained)
    assert s.master_copies == 0  # the fp32 parameters are the master


def test_deepspeed_layout_keeps_bf16_weights_and_an_fp32_master() -> None:
    _, pred = _tiny("full", "+model.dtype=bfloat16", precision="bf16-master")
    s = pred.phases["train"]
    assert s.master_copies == 2 * s.trained_params == 2 * s.gradients and s.frozen_weights < s.trained_params / 100


def test_offloaded_phase_keeps_load_dtype_weights_and_one_gradient_on_the_device() -> None:
    # peftlab.offload: a bf16 model's weights stay bf16; fp32 master + fp32 gradient + two fp32 moments (+ a step
    # count per tensor) in CPU memory; on the device the gradient of the largest tensor, nothing at the step
    cfg, pred = _tiny("full", "+model.dtype=bfloat16", optimizer_offload=True)
    s = pred.phases["train"]
    spec, method, task = validate_config(cfg)
    from peftlab.architecture import meta_backbone

    model = method.apply(meta_backbone(spec, task.head, task.num_labels), spec)
    n, tensors = count_parameters(model)[0], sum(1 for _ in model.parameters())
    assert s.trained_params == 2 * n and s.master_copies == s.optimizer_state == 0
    assert s.offloaded == 4 * FP32 * n + FP32 * tensors
    assert s.gradients == 2 * max(p.numel() for p in model.parameters())
    assert s.moments["optimizer step"] == s.frozen_weights + s.trained_params + s.method_state
    assert s.engine.startswith("AdamW in CPU memory")
    _, device = _tiny("full", "+model.dtype=bfloat16")
    assert device.phases["train"].peak > 2 * s.peak  # fp32 weights, gradients and Adam on the device
    _, pure = _tiny("full", "+model.dtype=bfloat16", precision="bf16-true")  # pure bf16: Adam's moments bf16 too
    assert pure.phases["train"].optimizer_state == 2 * 2 * n + FP32 * tensors
    with pytest.raises(ConfigError, match="has none"):  # LoRA trains no phase with every parameter
        _tiny("lora", optimizer_offload=True)


def test_smt_phases_offload_and_assumed_selection() -> None:
    common = ("method.block_size=16", "method.budget_unit=blocks", "method.budget=12", "method.warmup_mode=grad_only")
    _, gpu = _tiny("smt", *common)  # device cuda: the warm-up sums go to CPU memory
    _, cpu = _tiny("smt", *common, device="cpu")
    eligible = 2 * 3 * 64 * 64  # tiny_llama: 2 layers × q, k, v of 64×64
    assert gpu.phases["warmup"].offloaded == cpu.phases["warmup"].method_state == FP32 * eligible
    assert gpu.phases["warmup"].trained_params == 0  # grad_only: the probed weights are not trained
    assert gpu.phases["train"].trained_params == FP32 * 12 * 16 * 16
    assert "12 blocks of 16²" in gpu.notes[0]


def test_checkpointing_keeps_block_inputs_instead_of_activations() -> None:
    _, plain = _tiny("lora")
    _, ckpt = _tiny("lora", grad_checkpointing=True)
    a, b = plain.phases["train"], ckpt.phases["train"]
    assert b.activations < a.activations and "block recompute" in b.moments
    assert (a.frozen_weights, a.trained_params) == (b.frozen_weights, b.trained_params)


def _spy_activations(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The :class:`Activations` each measurement of the next predictions returns, in order."""
    seen: list[Any] = []
    predict_module = sys.modules["peftlab.memory.predict"]
    measure = predict_module.measure_activations
    monkeypatch.setattr(predict_module, "measure_activations", lambda *a, **k: seen.append(measure(*a, **k))
                        or seen[-1])
    return seen


def test_checkpointed_blocks_are_measured_as_their_recompute(monkeypatch: pytest.MonkeyPatch) -> None:
    # a model built with checkpointing runs each block inside torch.utils.checkpoint, whose own saved-tensor hooks hid
    # the block's saved tensors (and autocast's weight copies) from the measurement; the block must be measured as its
    # recompute runs it: for full FT (every input requires grad either way) exactly what it saves without
    seen = _spy_activations(monkeypatch)
    cfg = compose(["model=tiny_llama", "task=commonsense_synthetic", "method=full",
                   "+model.gradient_checkpointing=true"])
    for checkpointing in (False, True):
        predict_config(cfg, MemorySetting(batch=2, seq=16, precision="bf16-mixed", grad_checkpointing=checkpointing))
    plain, ckpt = seen
    assert min(ckpt.per_block) > 0 and ckpt.per_block == plain.per_block
    assert ckpt.weight_copies == plain.weight_copies > 0


@pytest.mark.parametrize("method, overrides, checkpointing", [
    ("lora", (), False), ("lisa", (), False), ("full", (), True),
    ("smt", ("method.block_size=16", "method.budget_unit=blocks", "method.budget=13", "method.warmup_mode=grad_only"),
     True)])
def test_replayed_blocks_measure_what_running_every_block_measures(method: str, overrides: tuple[str, ...],
                                                                   checkpointing: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 blocks: the first block of each kind runs, the others are replayed from its record (SMT's spread selection
    # makes two kinds, LISA's active blocks another, LoRA's first block sees an input that needs no grad); every
    # phase's prediction equals, to the byte, the one that runs every block
    activations = sys.modules["peftlab.memory.activations"]
    replays: list[int] = []
    replay = activations.replay
    monkeypatch.setattr(activations, "replay", lambda *a, **k: replays.append(1) or replay(*a, **k))
    cfg = compose(["model=tiny_llama", "task=commonsense_synthetic", "model.config.num_hidden_layers=4",
                   f"method={method}", *overrides])
    setting = MemorySetting(batch=2, seq=16, precision="bf16-mixed", grad_checkpointing=checkpointing)
    fast = predict_config(cfg, setting)
    replayed = len(replays)
    every = predict_config(cfg, setting, replay_blocks=False)
    assert replayed >= 2 and len(replays) == replayed
    assert {k: (s.by_kind(), s.moments) for k, s in fast.phases.items()} == \
        {k: (s.by_kind(), s.moments) for k, s in every.phases.items()}


def test_shira_built_without_drawing_its_support_predicts_what_the_drawn_support_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the memory model builds SHiRA with all-zero indices of the support's size instead of drawing the random support
    # (minutes at 7B): every phase's prediction equals the one with the support drawn as a run draws it
    cfg = compose(["model=tiny_llama", "task=commonsense_synthetic", "method=shira", "method.r=2"])
    setting = MemorySetting(batch=2, seq=16, precision="bf16-mixed")
    built = predict_config(cfg, setting)
    monkeypatch.delitem(sys.modules["peftlab.memory.planners"].BUILDERS, "shira")
    drawn = predict_config(cfg, setting)
    assert built.phases["train"].trainable == 2 * 2 * 2 * (64 + 64)  # 2 layers × q, v × r·(d_in + d_out)
    assert {k: (s.by_kind(), s.moments) for k, s in built.phases.items()} == \
        {k: (s.by_kind(), s.moments) for k, s in drawn.phases.items()}


def test_cli_for_the_tiny_models_and_its_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model=tiny_vit", "task=digits", "method=lora", "method.targets=[qkv]", "--memory", "batch=4",
                 "grad_checkpointing=true"]) == 0
    out = capsys.readouterr().out
    assert "pixel_values 4×3×" in out and "peak:" in out and "fits one GPU of 24, 40, 80 GiB" in out
    # SMT's default block_size=auto, and the task the model's config names (as budget without --memory)
    assert main(["model=tiny_llama", "method=smt", "method.budget_unit=blocks", "method.budget=4", "--memory",
                 "seq=8", "batch=2"]) == 0
    out = capsys.readouterr().out
    assert "warm-up (full)" in out and "task=commonsense_synthetic" in out and "4 blocks of 64²" in out
    for bad, message in (("batch=0", "batch must be an integer >= 1 (e.g. batch=16), got 0"),
                         ("precision=fp8", "precision must be one of ('bf16-mixed', '16-mixed', '32-true', "
                                           "'bf16-master', 'bf16-true'), got 'fp8'"),
                         ("grad_checkpointing=maybe", "grad_checkpointing=maybe is not a boolean")):
        assert main(["model=tiny_llama", "task=commonsense_synthetic", "--memory", bad]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model, task", [("llama_7b", "commonsense"), ("llama3_8b", "commonsense"),
                                         ("deberta_v3_base", "rte"), ("vit_b16_in21k", "vtab/cifar")])
def test_cli_at_paper_scale(model: str, task: str, capsys: pytest.CaptureFixture[str]) -> None:
    method = ["method=lora", "method.targets=[qkv]"] if model.startswith("vit") else ["method=smt"]
    assert main([f"model={model}", f"task={task}", *method, "--memory", "grad_checkpointing=true"]) == 0
    out = capsys.readouterr().out
    assert "peak:" in out
    if model.startswith("llama"):  # the official warm-up fits no GPU with AdamW on it; offloaded, it fits 80 GiB
        assert "fits one 80 GiB GPU with optim.offload=true" in out and "AdamW in CPU memory" in out
