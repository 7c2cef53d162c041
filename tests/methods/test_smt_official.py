"""SMT as the official code runs it (HectorHHZ/Sparse_Matrix_Tuning ``deepspeed/fine_tune.py``,
``deepspeed/smt/smt_helper.py``): the block phase's lr schedule, Adam betas in both phases, the warm-up gradient
sums offloaded to the CPU, ``norm_dist`` selection, a warm-up that must fit in the run, task heads trained, the
block size following the model and the budget calculator's LLaMA default."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from peftlab.budget import compose, count, main, meta_backbone
from peftlab.errors import ConfigError, DataUnavailableError
from peftlab.methods.smt.config import SmtConfig
from peftlab.methods.smt.method import SparseMatrixTuning
from peftlab.methods.smt.selection import select_blocks
from peftlab.models import load_backbone
from peftlab.train import build, run, validate_config
from tests.conftest import compose_config

SMT = ["method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=5",
       "method.warmup_steps=2", "method.smt_lr=3e-3"]


def fit(cfg: DictConfig, steps: int, tmp_path: Path) -> tuple[pl.Trainer, list[float]]:
    """``steps`` optimizer steps; the lr of every step."""
    module, data, _ = build(cfg)
    lrs: list[float] = []

    class Lr(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=[Lr()])
    trainer.fit(module, datamodule=data)
    return trainer, lrs


# ---------------- the block phase's schedule, Adam betas ----------------
def test_block_phase_decays_from_smt_lr_without_warmup(cfg_factory: Callable[..., DictConfig], tmp_path: Path) -> None:
    # optim.warmup_steps=2 shapes the warm-up phase only; after the switch (step 2, 8 steps in all) the official
    # schedule is linear decay from smt_lr over the remaining 6 steps: 3e-3 × (6, 5, 4, ...)/6
    trainer, lrs = fit(cfg_factory(*SMT, "optim.warmup_steps=2", "optim.betas=[0.9,0.95]"), 8, tmp_path)
    assert lrs[2:] == pytest.approx([3e-3 * (6 - i) / 6 for i in range(6)])
    assert trainer.optimizers[0].param_groups[0]["betas"] == (0.9, 0.95)  # the block phase's AdamW


def test_block_phase_warmup_is_an_explicit_option(cfg_factory: Callable[..., DictConfig], tmp_path: Path) -> None:
    _, lrs = fit(cfg_factory(*SMT, "method.smt_lr_warmup_steps=2"), 8, tmp_path)
    assert lrs[2:4] == pytest.approx([0.0, 3e-3 / 2])  # s / w: transformers' get_scheduler, as the official loop
    assert lrs[4] == pytest.approx(3e-3)


def test_warmup_phase_uses_optim_betas(cfg_factory: Callable[..., DictConfig], tmp_path: Path) -> None:
    trainer, _ = fit(cfg_factory(*SMT, "method.warmup_steps=5", "optim.betas=[0.9,0.95]"), 2, tmp_path)
    assert trainer.optimizers[0].param_groups[0]["betas"] == (0.9, 0.95)


# ---------------- a warm-up that cannot end ----------------
def test_warmup_not_shorter_than_the_run_fails_before_training(cfg_factory: Callable[..., DictConfig],
                                                               tmp_path: Path) -> None:
    # 64 examples / batch 16 × 1 epoch = 4 optimizer steps
    with pytest.raises(ConfigError, match=r"method.warmup_steps=4 is not shorter than the run's 4 optimizer steps"):
        run(cfg_factory(*SMT, "method.warmup_steps=4"))
    assert not list((tmp_path / "runs").rglob("*.json"))


# ---------------- auto: the paper's settings fitted to the model and the run ----------------
def test_auto_settings_are_the_papers_on_llama_7b_and_scale_with_width_and_run_length() -> None:
    auto = SmtConfig(name="smt")
    assert auto.resolve_lrs(4096) == (9.65e-6, 1e-4)  # LLaMA-7B: the paper's values
    assert auto.resolve_lrs(384) == pytest.approx((9.65e-6 * 4096 / 384, 1e-4 * 4096 / 384))  # MiniLM
    assert SmtConfig(name="smt", lr=2e-5, smt_lr=3e-3).resolve_lrs(384) == (2e-5, 3e-3)  # numbers as given
    assert [auto.resolve_warmup(t) for t in (3, 192, 1000, 31_875)] == [1, 19, 100, 100]  # 10%, at most 100
    assert SmtConfig(name="smt", warmup_steps=7).resolve_warmup(192) == 7
    with pytest.raises(ConfigError, match="method.lr must be a number or auto, got 'fast'"):
        SmtConfig(name="smt", lr="fast")


def test_a_run_resolves_auto_prints_it_and_records_it(cfg_factory: Callable[..., DictConfig], tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # tiny BERT (hidden 64), 64 examples / batch 16 × 2 epochs = 8 optimizer steps: warm-up 10% → 1 step
    caplog.set_level("INFO", logger="peftlab")
    run(cfg_factory("method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=5",
                    "trainer.max_epochs=2", "test=false"))
    (record,) = (tmp_path / "runs").rglob("*.json")
    state = json.loads(record.read_text())["method_state"]
    assert (state["warmup_steps"], state["switched_at_step"]) == (1, 1)
    assert (state["lr"], state["smt_lr"]) == pytest.approx((9.65e-6 * 64, 1e-4 * 64))
    assert "SMT: warmup_steps=auto → 1 (the paper's 100, at most 10% of the run's 8 optimizer steps)" in caplog.text
    assert "SMT: lr=auto → 0.000618, smt_lr=auto → 0.0064 (auto: the paper's LLaMA-7B" in caplog.text


# ---------------- warm-up gradient sums on the CPU ----------------
@pytest.mark.parametrize(("setting", "cuda", "cpu"), [(None, True, False), (True, True, True), (False, False, False)])
def test_offload_default_follows_the_weights_device(setting: bool | None, cuda: bool, cpu: bool) -> None:
    config = SmtConfig(name="smt", offload_grad_sums=setting)
    assert (config.offloads(torch.device("cuda")), config.offloads(torch.device("cpu"))) == (cuda, cpu)


def test_grad_sums_are_counted_in_the_method_state(cfg_factory: Callable[..., DictConfig], tmp_path: Path) -> None:
    module, data, _ = build(cfg_factory(*SMT, "method.offload_grad_sums=true"))
    batch = next(iter(data.train_dataloader()))
    module.task.loss(module.model, batch).backward()
    method = module.method
    assert isinstance(method, SparseMatrixTuning)
    method.on_before_optimizer_step(module.model, skipped=False)  # full warm-up: .grad is summed at the step
    eligible = sum(m.weight.numel() for pool in method.pools.values() for m in pool.values())
    assert method.method_state()["grad_sums_bytes"] == {"cpu": 4 * eligible}  # fp32 sums of q, k, v


# ---------------- norm_dist (official) vs per_matrix (ours) ----------------
def test_norm_dist_takes_the_top_k_of_every_matrix() -> None:
    scores = {"a": torch.tensor([[9.0, 8.0], [7.0, 6.0]]), "b": torch.tensor([[0.1, 0.4], [0.3, 0.2]])}
    assert select_blocks(scores, 2, "norm_dist") == {"a": [0, 1], "b": [1, 2]}  # k per matrix: 2·M in all
    assert sum(map(len, select_blocks(scores, 2, "per_matrix").values())) == 2  # ours: k in all


def test_norm_dist_budget_is_per_matrix(cfg_factory: Callable[..., DictConfig]) -> None:
    # tiny_bert: 2 layers × q, k, v of 64×64 = 6 matrices of 16 blocks of 16²
    budget = count(compose(["model=tiny_bert", *SMT, "method.selection=norm_dist", "method.train_head=false"]))
    assert budget.trainable == 5 * 6 * 16 * 16
    with pytest.raises(ConfigError, match="norm_dist takes the top 17 blocks of every matrix, but the smallest "
                       "attention matrix has 16"):
        build(cfg_factory(*SMT, "method.selection=norm_dist", "method.budget=17"))


# ---------------- task heads ----------------
@pytest.mark.parametrize("mode", ["full", "grad_only"])
def test_llama_classification_head_trains_after_the_switch(mode: str) -> None:
    # LLaMA with the sequence-classification head transformers adds (score), switched outside Lightning; the run
    # recipe pairs LLaMA with causal-LM tasks only, but the head a task adds must train whatever the pairing
    cfg = compose_config(["model=tiny_llama", "task=commonsense_synthetic", *SMT, f"method.warmup_mode={mode}"])
    spec, method, _ = validate_config(cfg)
    assert isinstance(method, SparseMatrixTuning)
    torch.manual_seed(0)
    model = load_backbone(spec, "seq_cls", 2)
    model.config.pad_token_id = 0
    model = method.apply(model, spec)
    batch = {"input_ids": torch.randint(3, 400, (4, 12)), "labels": torch.tensor([0, 1, 0, 1])}
    model = method.gradient_phase(model, itertools.repeat(batch))
    assert method.phase == "blocks" and model.score.weight.requires_grad
    assert any(p is model.score.weight for p in method.trained_parameters(model))


# ---------------- block size ----------------
@pytest.mark.parametrize(("model", "task", "size"), [
    ("minilm", "synthetic_pairs", 128), ("llama_7b", "commonsense", 256), ("tiny_bert", "synthetic_pairs", 64)])
def test_block_size_auto_follows_the_model(model: str, task: str, size: int) -> None:
    # minilm: hidden 384 = 3 × 128; llama_7b: 4096, the paper's 256; tiny_bert: 64
    spec, method, task = validate_config(compose([f"model={model}", f"task={task}", "method=smt"]))
    assert isinstance(method, SparseMatrixTuning)
    method.planned_trainable(meta_backbone(spec, task.head, task.num_labels), spec)
    assert method.block_size == size


def test_explicit_block_size_still_checked(cfg_factory: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError, match=r"method.block_size=256 does not divide .* \(64×64\); block sizes "
                       r"dividing every eligible matrix: \[64, 32, 16, 8\]"):
        build(cfg_factory("method=smt", "method.block_size=256"))


def test_smt_on_a_glue_task_offline_fails_only_on_the_data(cfg_factory: Callable[..., DictConfig]) -> None:
    with pytest.raises(DataUnavailableError, match="could not load dataset 'nyu-mll/glue/rte'"):
        run(cfg_factory("method=smt", "task=rte", tiny=False))  # MiniLM: block_size auto → 128


# ---------------- the budget calculator's default task ----------------
def test_budget_defaults_llama_to_its_lm_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model=llama_7b", "method=smt"]) == 0
    out = capsys.readouterr().out
    assert "task=commonsense (head causal_lm; trained head modules: none)" in out
    assert "trainable 56,557,568 / total 6,738,415,616" in out  # the paper's 863 blocks of 256²
