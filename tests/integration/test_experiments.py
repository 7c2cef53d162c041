"""Every paper-table experiment file composes, with every method/task entry of its full and mini plans, into a
config whose method/task/model validate (no data or weights loaded); wandb tags compose; one tiny mini point
runs end to end through scripts/reproduce.py and a second call skips it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab import reproduce as rp
from peftlab import train
from tests.conftest import ROOT

TABLES = rp.experiment_names()
REQUIRED = {"smt_commonsense", "capaboost_glue", "capaboost_squad", "capaboost_vtab", "sparse_peers", "smt_budget"}


def _covering(points: list[rp.Point]) -> list[rp.Point]:
    """Fewest points that use every method entry, task entry and (method, budget) once."""
    out, seen = [], set()
    for pt in points:
        new = {("m", pt.method), ("t", pt.task), ("b", pt.method, pt.budget)} - seen
        if new and pt.seed == points[0].seed:
            out.append(pt)
            seen |= new
    return out


def test_every_required_table_has_an_experiment_file() -> None:
    assert set(TABLES) >= REQUIRED


@pytest.mark.parametrize("mini", [False, True], ids=["full", "mini"])
@pytest.mark.parametrize("table", TABLES)
def test_experiment_composes_and_validates(table: str, mini: bool, monkeypatch) -> None:
    monkeypatch.setattr(train, "_check_local_data", lambda task: None)  # real data sets are not on this machine
    monkeypatch.setattr(train, "_check_accelerator", lambda trainer: None)  # nor the GPUs the tables ask for
    p = rp.plan(table, mini=mini)
    assert p.points, f"{table}: empty plan"
    for point in _covering(p.points):
        cfg = rp.compose_config([f"experiment={table}", *point.overrides, f"seed={point.seed}"])
        train.validate(cfg)  # model spec, method and task configs: unknown keys / bad values raise ConfigError
        assert cfg.table.name == table
        assert cfg.table.row and "None" not in str(cfg.table.row), cfg.table.row
        assert str(cfg.method.name) in str(cfg.table.row) or "table.row" in " ".join(point.overrides)
        tags = list(cfg.tags)
        for prefix, value in (("table", table), ("method", cfg.method.name), ("task", cfg.task.name),
                              ("seed", point.seed), ("budget", point.budget)):
            assert f"{prefix}:{value}" in tags, (prefix, tags)
        if mini:
            assert cfg.trainer.accelerator == "cpu" and cfg.model.name.startswith(("tiny_", "minilm"))


def test_wandb_logger_groups_by_table() -> None:
    cfg = rp.compose_config(["experiment=capaboost_glue", "logger=wandb", "task=mrpc", "seed=43"])
    w = cfg.logger.wandb
    assert w.group == "capaboost_glue" and w.job_type == "capaboost_lora" and w.mode == "offline"
    assert "task:mrpc" in list(w.tags) and "seed:43" in list(w.tags)


def test_submitit_slurm_launcher_config() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(rp.CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_tiny_mini_point_end_to_end_then_skipped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cmd = [sys.executable, "scripts/reproduce.py", "capaboost_vtab", "--mini", "--methods", "lora", "--seeds", "0",
           "--runs-dir", str(runs), "--no-tables", "--", "task.epochs=1", "+trainer.limit_train_batches=4",
           f"hydra.sweep.dir={tmp_path}/multirun"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = runs.rglob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "complete"
    assert record["config"]["table"] == {**record["config"]["table"], "name": "capaboost_vtab", "row": "lora"}
    assert "table:capaboost_vtab" in record["tags"] and record["model"] == "tiny_vit"
    assert record["command"].startswith("python train.py experiment=capaboost_vtab ") and "seed=0" in record["command"]
    again = subprocess.run([*cmd[:cmd.index("--")], "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "1 already complete" in again.stdout and "0 to run" in again.stdout
