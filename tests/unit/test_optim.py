"""The optimizer and lr schedule of a run are the released scripts' (issue 23; src/peftlab/optim.py).

For the demo and one cell of every experiment file, ``PeftModule.configure_optimizers`` is set against the real
``transformers.Trainer`` (``create_optimizer_and_scheduler``) built with the source's ``TrainingArguments`` on the same
model object, at the cell's real shape on the meta device: the lr of every step (1e-12 relative), the decayed and
not-decayed parameter names, betas, eps, weight decay and gradient clipping. Where the source is not what
transformers 5 builds, the test holds the cell to the source: the CapaBoost scripts' transformers-4 AdamW
(:class:`LegacyAdamW`, its update checked against transformers 4.21's formula), NOAH's timm optimizer and per-epoch
cosine (capaboost_vtab), SMT's official loop (its two schedules, from transformers' ``get_scheduler`` as
deepspeed/fine_tune.py builds them, across a real switch). Then: every key of conf/config.yaml reaches the run."""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import Trainer, TrainingArguments, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

from peftlab import budget, tables, train
from peftlab import reproduce as rp
from peftlab.config_utils import to_dict
from peftlab.methods.base import Method
from peftlab.module import PeftModule
from peftlab.optim import LegacyAdamW, decay_parameter_names
from peftlab.train import build, resume_checkpoint, run, validate_config
from tests.conftest import CONF, TINY, compose_config


# ---------------------------------------------------------------------------------------------- the cells
@dataclass(frozen=True)
class Cell:
    """A table cell (``table`` None: the demo) and its source's optimiser settings: ``args`` are the source's
    ``TrainingArguments`` (none: NOAH's timm recipe), ``legacy``: the source builds transformers 4's AdamW."""

    table: str | None
    method: str
    task: str
    budget: Any = None
    epochs: int = 3  # of the cell's run
    steps_per_epoch: int = 50  # the data's; any value compares the two schedules, the large data sets get fewer here
    args: dict[str, Any] = field(default_factory=dict)
    legacy: bool = False


CAPABOOST_GLUE_LORA = {"learning_rate": 1.5e-3, "warmup_steps": 200, "weight_decay": 0.01}  # scripts/run_lora.sh RTE
CAPABOOST_GLUE_ADAPTER = {"learning_rate": 5e-4, "warmup_steps": 1000, "weight_decay": 0.01}  # scripts/run_adapter.sh
DORA = {"warmup_steps": 100, "optim": "adamw_torch"}  # DoRA commonsense_reasoning/finetune.py TrainingArguments
CELLS = {
    # python train.py: 1,000 pairs / batch 32 × 6 epochs, warm-up ratio 0.06 (ceil: 12 of 192 steps); adamw_torch:
    # transformers 5's default adamw_torch_fused is the same update in one kernel
    "demo": Cell(None, "lora", "synthetic_pairs", epochs=6, steps_per_epoch=32,
                 args={"learning_rate": 1e-3, "warmup_steps": 0.06, "optim": "adamw_torch"}),
    # RTE: 2,490 examples / batch 32 (run_lora.sh) or 64 (run_adapter.sh)
    "capaboost_glue lora": Cell("capaboost_glue", "lora", "rte", epochs=60, steps_per_epoch=78,
                                args=CAPABOOST_GLUE_LORA, legacy=True),
    "capaboost_glue capaboost_lora": Cell("capaboost_glue", "capaboost_lora", "rte", epochs=60, steps_per_epoch=78,
                                          args=CAPABOOST_GLUE_LORA, legacy=True),
    "capaboost_glue adapter_pfeiffer": Cell("capaboost_glue", "adapter_pfeiffer", "rte", epochs=30, steps_per_epoch=39,
                                            args=CAPABOOST_GLUE_ADAPTER, legacy=True),
    "capaboost_glue capaboost_adapter": Cell("capaboost_glue", "capaboost_adapter", "rte", epochs=30,
                                             steps_per_epoch=39, args=CAPABOOST_GLUE_ADAPTER, legacy=True),
    # scripts/run_multimask_lora_squad.sh (lora_r=1); SQuAD's ~88k training windows / batch 32 would be 2,770 steps
    "capaboost_squad capaboost_lora": Cell("capaboost_squad", "capaboost_lora", "squad", budget=1, epochs=15,
                                           steps_per_epoch=300, legacy=True,
                                           args={"learning_rate": 1e-3, "warmup_steps": 1000, "weight_decay": 0.01}),
    # DoRA README LLaMA-7B rows; commonsense_170k / batch 16 = 10,652 steps per epoch (one cell; the others fewer)
    "smt_commonsense lora": Cell("smt_commonsense", "lora", "commonsense", epochs=3, steps_per_epoch=10652,
                                 args={**DORA, "learning_rate": 3e-4}),
    "smt_commonsense dora": Cell("smt_commonsense", "dora", "commonsense", epochs=3, steps_per_epoch=500,
                                 args={**DORA, "learning_rate": 1e-4}),
    "smt_budget dora": Cell("smt_budget", "dora", "commonsense", budget=4, epochs=3, steps_per_epoch=500,
                            args={**DORA, "learning_rate": 2e-4}),
    # the peers train in the same harness (sparse_peers: conf/protocol/dora_commonsense.yaml), S2FT at its lr 2e-4
    "sparse_peers s2ft": Cell("sparse_peers", "s2ft", "commonsense", epochs=3, steps_per_epoch=500,
                              args={**DORA, "learning_rate": 2e-4}),
    # NOAH configs/LoRA/VTAB/slurm_train_lora_vtab.sh: 1,000 images / batch 64, 100 epochs
    "capaboost_vtab lora": Cell("capaboost_vtab", "lora", "cifar", epochs=100, steps_per_epoch=16),
}


class MetaTrainingArguments(TrainingArguments):
    """HF's arguments, leaving the model where it is (meta tensors cannot move): the override its docs name."""

    @property
    def place_model_on_device(self) -> bool:
        return False


def point(cell: Cell) -> rp.Point:
    """The cell's first seed in its table's full plan."""
    return next(p for p in rp.plan(cell.table).points if (p.method, p.task, p.budget) == (cell.method, cell.task,
                                                                                           cell.budget))


def compose_cell(cell: Cell) -> DictConfig:
    if cell.table is None:
        return compose_config([])
    p = point(cell)
    return rp.compose_config([f"experiment={cell.table}", *p.overrides, f"seed={p.seed}"])


_BASES: dict[tuple[str, str, int | None], nn.Module] = {}  # the meta backbones built so far


def meta_model(cfg: DictConfig) -> tuple[nn.Module, Method, Any]:
    """The cell's model at its real shape on the meta device, its method applied (as budget.count applies it)."""
    spec, method, task = validate_config(cfg)
    key = (spec.name, task.head, task.num_labels)
    if key not in _BASES:
        _BASES[key] = budget.meta_backbone(spec, task.head, task.num_labels)
    with torch.device("meta"):
        model = method.apply(copy.deepcopy(_BASES[key]), spec)
    return model, method, task


def run_length(epochs: int, steps_per_epoch: int) -> SimpleNamespace:
    """What configure_optimizers reads from its trainer, for a run of ``epochs`` × ``steps_per_epoch`` steps, before
    its first step."""
    return SimpleNamespace(estimated_stepping_batches=epochs * steps_per_epoch, num_training_batches=steps_per_epoch,
                           accumulate_grad_batches=1, max_epochs=epochs, global_step=0)


def ours(cfg: DictConfig, model: nn.Module, method: Method, task: Any, cell: Cell) -> dict[str, Any]:
    """What PeftModule.configure_optimizers builds, under a trainer that reports the cell's run length."""
    module = PeftModule(model, method, task, to_dict(cfg.optim))
    module.trainer = run_length(cell.epochs, cell.steps_per_epoch)  # type: ignore[assignment]
    built = module.configure_optimizers()
    return {"optimizer": built["optimizer"], "scheduler": built["lr_scheduler"]["scheduler"]}


def groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[float, set[str]]:
    """weight decay → the names of the parameters it applies to."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[float, set[str]] = {}
    for g in optimizer.param_groups:
        out.setdefault(g["weight_decay"], set()).update(names[id(p)] for p in g["params"])
    return {wd: ns for wd, ns in out.items() if ns}


def lrs(scheduler: Any, steps: int, epoch_wise: int = 0) -> list[float]:
    """The lr of every optimizer step; ``epoch_wise`` (steps per epoch): a timm scheduler stepped as NOAH's loop
    steps it (``lr_scheduler.step(epoch)`` after each epoch)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a scheduler without optimizer steps
        for step in range(steps):
            out.append(scheduler.optimizer.param_groups[0]["lr"])
            if not epoch_wise:
                scheduler.step()
            elif (step + 1) % epoch_wise == 0:
                scheduler.step(step // epoch_wise)
    return out


ADAM_KEYS = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused", "capturable",
             "differentiable", "decoupled_weight_decay")


def hyper(optimizer: torch.optim.Optimizer, keys: tuple[str, ...] = ADAM_KEYS) -> list[dict[str, Any]]:
    return [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups if g["params"]]


def cited(cell: Cell, key: str) -> str:
    return str({c.key: c.source for c in point(cell).cited}.get(key))


HF_CELLS = [k for k, c in CELLS.items() if c.args]


@pytest.mark.parametrize("name", HF_CELLS)
def test_cell_trains_as_hf_trainer(name: str, tmp_path: Path) -> None:
    cell = CELLS[name]
    cfg = compose_cell(cell)
    model, method, task = meta_model(cfg)
    mine = ours(cfg, model, method, task, cell)
    hf = Trainer(model=model, args=MetaTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                         **cell.args))
    steps = cell.epochs * cell.steps_per_epoch
    hf.create_optimizer_and_scheduler(num_training_steps=steps)
    assert groups(mine["optimizer"], model) == groups(hf.optimizer, model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == set().union(*groups(mine["optimizer"], model).values())
    if cell.legacy:  # transformers 5 builds torch's AdamW; the CapaBoost scripts' transformers 4.21 built its own
        assert type(mine["optimizer"]) is LegacyAdamW and "optimization.py" in cited(cell, "optim.optimizer")
        assert hyper(mine["optimizer"], ("betas", "eps", "weight_decay")) == hyper(hf.optimizer, ("betas", "eps",
                                                                                               "weight_decay"))
        # and transformers 4's decay rule (AdapterTrainer.create_optimizer: outside nn.LayerNorm, no "bias") is
        # transformers 5's on what this cell trains
        old = {n for n in get_parameter_names(model, [nn.LayerNorm]) if "bias" not in n}
        assert old & trained == decay_parameter_names(model) & trained
    else:
        assert type(mine["optimizer"]) is type(hf.optimizer) is torch.optim.AdamW
        assert hyper(mine["optimizer"]) == hyper(hf.optimizer)
    assert lrs(mine["scheduler"], steps) == pytest.approx(lrs(hf.lr_scheduler, steps), rel=1e-12, abs=0)
    assert cfg.trainer.gradient_clip_val == hf.args.max_grad_norm == 1.0
    assert cfg.trainer.get("gradient_clip_algorithm") in (None, "norm")  # HF clips the global norm


def test_demo_warmup_rounds_up() -> None:
    # issue 23: the demo's 0.06 × 192 = 11.52 warm-up steps are 12 (HF's ceil), not 11
    cell = CELLS["demo"]
    cfg = compose_cell(cell)
    model, method, task = meta_model(cfg)
    schedule = lrs(ours(cfg, model, method, task, cell)["scheduler"], 14)
    assert schedule[:13] == pytest.approx([cfg.method.lr * s / 12 for s in range(13)], rel=1e-12)
    assert schedule[13] < schedule[12]


def test_vtab_cell_trains_as_noah(tmp_path: Path) -> None:
    """NOAH supernet_train_prompt.py: timm's create_optimizer (AdamW, no decay on 1-D tensors and biases) and
    create_scheduler (cosine) with its argparse defaults and slurm_train_lora_vtab.sh's values, the scheduler stepped
    once per epoch; no clipping."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler

    cell = CELLS["capaboost_vtab lora"]
    cfg = compose_cell(cell)
    model, method, task = meta_model(cfg)
    mine = ours(cfg, model, method, task, cell)
    noah = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=1e-4, eps=1e-8)
    args = SimpleNamespace(sched="cosine", epochs=100, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=10,
                           cooldown_epochs=10, decay_rate=0.1, lr_noise=None)
    scheduler, _ = create_scheduler(args, noah)
    assert groups(mine["optimizer"], model) == groups(noah, model)
    assert type(mine["optimizer"]) is type(noah) and hyper(mine["optimizer"], ("betas", "eps")) == hyper(noah, (
        "betas", "eps"))
    steps = cell.epochs * cell.steps_per_epoch
    noah_lrs = lrs(scheduler, steps, epoch_wise=cell.steps_per_epoch)
    assert lrs(mine["scheduler"], steps) == pytest.approx(noah_lrs, rel=1e-12, abs=0)
    assert noah_lrs[0] == noah_lrs[cell.steps_per_epoch] == 1e-6  # NOAH's one-epoch lag: epochs 0 and 1 at warmup_lr
    assert cfg.trainer.gradient_clip_val is None


# ---------------------------------------------------------------------------------------------- SMT's official loop
def test_smt_two_phases_follow_the_official_loop(tmp_path: Path) -> None:
    """HectorHHZ/Sparse_Matrix_Tuning deepspeed/fine_tune.py: get_scheduler(linear, lr_warmup_steps, epochs × steps)
    at ft_learning_rate; when current_step_count reaches full_ft_steps a new optimizer at smt_lr and
    get_scheduler(linear, smt_lr_warmup_steps, epochs × steps − current_step_count). A real run with a switch."""
    cfg = compose_config([*TINY, "method=smt", "method.block_size=16", "method.budget_unit=blocks", "method.budget=5",
                          "method.warmup_steps=4", "method.lr=1e-3", "method.smt_lr=3e-3", "optim.warmup_steps=2",
                          "method.smt_lr_warmup_steps=2", "optim.betas=[0.9,0.95]", "task.num_train=96"], tmp_path)
    module, data, _ = build(cfg)
    seen: list[tuple[float, torch.optim.Optimizer]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
            seen.append((trainer.optimizers[0].param_groups[0]["lr"], trainer.optimizers[0]))

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path), callbacks=[Record()])
    trainer.fit(module, datamodule=data)
    total, switch = 6, 4  # 96 examples / batch 16; method.warmup_steps

    def official(lr: float, warmup: int, steps: int) -> list[float]:
        return lrs(get_scheduler("linear", torch.optim.SGD([torch.zeros(1)], lr=lr), warmup, steps), steps)

    expected = official(1e-3, 2, total)[:switch] + official(3e-3, 2, total - switch)
    assert [lr for lr, _ in seen] == pytest.approx(expected, rel=1e-12, abs=0)
    # the official groups put biases and norm weights at 0 decay (its no_decay_name_list): the same names here
    for optimizer in (seen[0][1], seen[-1][1]):
        names = set().union(*groups(optimizer, module.model).values())
        official_decay = {n for n in names if not any(s in n.lower() for s in ("bias", "layer_norm.weight",
                                                                                 "layernorm.weight", "norm.weight"))}
        assert official_decay == decay_parameter_names(module.model) & names
        assert all(g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8 for g in optimizer.param_groups)
    assert seen[0][1] is not seen[-1][1] and cfg.trainer.gradient_clip_val == 1.0  # its DeepSpeed gradient_clipping


# ---------------------------------------------------------------------------------------------- transformers 4's AdamW
def test_legacy_adamw_is_transformers_4s_update() -> None:
    """transformers 4.21 optimization.py AdamW.step (correct_bias=True), restated in float64, step for step; and it is
    not torch's AdamW (eps before the bias correction, decay after the update)."""
    torch.manual_seed(0)
    start = torch.randn(6, dtype=torch.float64)
    grads = [torch.randn(6, dtype=torch.float64) * 1e-6 for _ in range(5)]
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.999), 1e-8, 0.1

    def run_optimizer(cls: Callable[..., torch.optim.Optimizer]) -> torch.Tensor:
        p = nn.Parameter(start.clone())
        opt = cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        return p.detach()

    p, m, v = start.clone(), torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
        p = p - lr * wd * p
    assert torch.allclose(run_optimizer(LegacyAdamW), p, rtol=1e-14, atol=0)
    assert not torch.allclose(run_optimizer(torch.optim.AdamW), p, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------- conf/config.yaml keys
def config_keys() -> list[str]:
    """Every leaf of conf/config.yaml's own body (lists are leaves; the groups it composes have their own tests)."""
    return sorted(rp.leaves({k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml")).items()
                             if k not in ("defaults", "hydra")}))


OPTIM_PROBES = {  # optim key → a non-default value; the probe is the optimizer and lrs configure_optimizers builds
    "optim.optimizer": "adamw_hf", "optim.weight_decay": 0.5, "optim.betas": [0.8, 0.9], "optim.eps": 1e-3,
    "optim.schedule": "timm_cosine", "optim.warmup_ratio": 0.5, "optim.warmup_steps": 3,
}
TIMM_PROBES = {"optim.warmup_lr": 1e-5, "optim.min_lr": 1e-4}  # the keys of optim.schedule=timm_cosine


def _optimizer_view(module: PeftModule, optim: dict[str, Any]) -> Any:
    """The optimizer class, its groups' settings and the lr of 12 steps (3 epochs of 4) configure_optimizers gives."""
    probe = PeftModule(module.model, module.method, module.task, optim)
    probe.trainer = run_length(3, 4)  # type: ignore[assignment]
    built = probe.configure_optimizers()
    return type(built["optimizer"]), hyper(built["optimizer"]), lrs(built["lr_scheduler"]["scheduler"], 12)


def test_every_config_key_reaches_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key of conf/config.yaml, set away from its default, changes what its consumer builds or writes (no key
    accepted and ignored; issue 23: optim.lr was). One run (nothing trained) with the run-level keys changed: tags,
    train, test, report.value and the paths through its record, seed, num_workers and report.select through what
    train.build built for it; then optim through configure_optimizers, ckpt_path and auto_resume through
    train.resume_checkpoint, objective through train.py's return value."""
    built: list[Any] = []

    def spy(cfg: DictConfig) -> Any:
        built.append(build(cfg))
        return built[-1]

    monkeypatch.setattr(train, "build", spy)
    results, out = tmp_path / "records", tmp_path / "run"
    run(compose_config([*TINY, "train=false", "test=false", "tags=[probe]", "report.value=val_best", "seed=1",
                        "num_workers=1", "report.select=[f1]", f"paths.results_dir={results}",
                        f"paths.output_dir={out}"]))
    (path,) = results.rglob("*.json")
    record = json.loads(path.read_text())
    assert record["tags"] == ["probe"] and tables.reported(record) == "val_best"
    assert record["global_steps"] == 0 and not any(k.startswith("test/") for k in record["metrics"])
    assert (out / "record_path").read_text().strip().endswith(path.name)
    (module, datamodule, _), = built
    assert module.select == ["f1"] and datamodule.train_dataloader().num_workers == 1
    seed0 = train.build_model(compose_config(TINY))[0]  # the head and LoRA's A are drawn from the seed
    assert not all(torch.equal(a, b) for a, b in zip(seed0.parameters(), module.model.parameters(), strict=True))
    probed = {"tags", "train", "test", "report.value", "paths.results_dir", "paths.output_dir", "seed", "num_workers",
              "report.select"}

    default = to_dict(compose_config(TINY).optim)
    for key, value in OPTIM_PROBES.items():
        optim = {**default, key.split(".")[1]: value}
        assert _optimizer_view(module, optim) != _optimizer_view(module, default), key
        probed.add(key)
    timm = {**default, "schedule": "timm_cosine"}
    for key, value in TIMM_PROBES.items():
        assert _optimizer_view(module, {**timm, key.split(".")[1]: value}) != _optimizer_view(module, timm), key
        probed.add(key)
    full = PeftModule(*train.build_model(compose_config([*TINY, "method=full"]))[:3], default)
    offloaded = PeftModule(full.model, full.method, full.task, {**default, "offload": True})
    for probe in (full, offloaded):
        probe.trainer = run_length(3, 4)  # type: ignore[assignment]
    weights = {id(p) for p in full.model.parameters()}
    stepped = [{id(p) for g in m.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
               for m in (full, offloaded)]
    assert stepped[0] <= weights and not stepped[1] & weights  # offload: the optimizer steps CPU masters
    probed.add("optim.offload")

    ckpt = tmp_path / "out" / "checkpoints" / "last.ckpt"  # where callbacks=default keeps the run's last.ckpt
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    assert resume_checkpoint(compose_config([*TINY, "callbacks=default"], tmp_path)) == str(ckpt)
    assert resume_checkpoint(compose_config([*TINY, "callbacks=default", "auto_resume=false"], tmp_path)) is None
    assert resume_checkpoint(compose_config([*TINY, f"ckpt_path={ckpt}"], tmp_path)) == str(ckpt)
    probed |= {"auto_resume", "ckpt_path"}

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from tests.integration.cli import CLI

    monkeypatch.setattr(CLI, "run", lambda cfg: {"test/accuracy": 0.25, "test/f1": 0.75})  # what run() returns
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    for objective, expected in ((None, 0.25), ("f1", 0.75)):  # default: ${task.main_metric} = accuracy
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", [*TINY, *([f"objective={objective}"] if objective else [])],
                          return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        assert CLI.main.__wrapped__(cfg) == expected  # train.py's return value: what a Hydra sweeper optimises
    probed.add("objective")
    assert probed == set(config_keys())
