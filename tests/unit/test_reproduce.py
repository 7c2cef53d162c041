"""reproduce.plan / pending / commands: the points of a table, skip of complete cells, the multirun commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftlab import reproduce as rp
from peftlab.errors import ConfigError
from tests.conftest import CONF, ROOT


def _value(overrides: tuple[str, ...], key: str) -> str:
    (v,) = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]  # dedupe: one value per key
    return v


def test_plan_expands_methods_tasks_budgets_seeds() -> None:
    p = rp.plan("capaboost_squad")
    assert len(p.points) == 2 * 2 * 4 * 1  # methods × tasks × budgets × seeds
    pt = next(x for x in p.points if x.method == "capaboost_lora" and x.task == "squad_v2" and x.budget == 4)
    assert _value(pt.overrides, "method") == "capaboost_lora"
    assert _value(pt.overrides, "method.r") == "4"
    assert _value(pt.overrides, "table.budget") == "4" and _value(pt.overrides, "table.budget_knob") == "r"


def test_most_specific_override_wins() -> None:
    points = rp.plan("capaboost_glue").points
    cell = next(x for x in points if (x.method, x.task) == ("capaboost_lora", "rte"))
    plain = next(x for x in points if (x.method, x.task) == ("lora", "rte"))
    assert _value(cell.overrides, "method.lr") == "1.5e-3"  # the cell's value beats the task's 5.0e-4
    assert _value(plain.overrides, "method.lr") == "5.0e-4"
    assert _value(cell.overrides, "task.epochs") == "60"


def test_mini_replaces_tasks_seeds_and_adds_overrides() -> None:
    p = rp.plan("smt_budget", mini=True)
    assert {x.task for x in p.points} == {"commonsense_synthetic"}
    assert {x.seed for x in p.points} == {0, 1}
    assert len(p.points) == 2 * 3 * 2  # mini methods (only: lora, smt) × mini budgets × seeds
    smt = next(x for x in p.points if x.method == "smt")
    assert _value(smt.overrides, "model") == "tiny_llama"
    assert _value(smt.overrides, "method.block_size") == "16"  # the mini method override beats the table's 256
    assert {x.budget for x in p.points if x.method == "smt"} == {12, 48, 96}


def test_seeds_and_methods_options() -> None:
    p = rp.plan("capaboost_glue", seeds=[7], only_methods=["lora"])
    assert {(x.method, x.seed) for x in p.points} == {("lora", 7)}
    with pytest.raises(ConfigError, match="not in table 'capaboost_glue'"):
        rp.plan("capaboost_glue", only_methods=["nope"])


def test_unknown_table_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown table 'nope'.*capaboost_glue"):
        rp.plan("nope")


def test_method_without_config_file_is_skipped(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    text = (conf / "experiment" / "sparse_peers.yaml").read_text()
    text = text.replace("    methods:\n", "    methods:\n      not_yet: [method=not_yet_written]\n", 1)
    (conf / "experiment" / "sparse_peers.yaml").write_text(text)
    p = rp.plan("sparse_peers", conf=conf)
    assert p.skipped_methods == ["not_yet"]
    assert "not_yet" not in {x.method for x in p.points} and p.points


def test_pending_skips_complete_cells_and_commands_group_seeds() -> None:
    p = rp.resolve_keys(rp.plan("capaboost_vtab", mini=True, only_methods=["lora"]))
    assert {p.keys[x] for x in p.points} == {("capaboost_vtab", "lora", "digits", s) for s in (0, 1)}
    todo = rp.pending(p, {("capaboost_vtab", "lora", "digits", 0)})
    assert [x.seed for x in todo] == [1]
    (cmd,) = rp.commands(todo, "capaboost_vtab", launcher="submitit_slurm", sweep_root="multirun/t", python="py")
    assert cmd[:4] == ["py", "train.py", "-m", "experiment=capaboost_vtab"]
    assert cmd[-1] == "seed=1" and "hydra/launcher=submitit_slurm" in cmd
    assert "hydra.sweep.dir=multirun/t/lora_digits" in cmd
    two = rp.commands(p.points, "capaboost_vtab", sweep_root="m", python="py")
    assert len(two) == 1 and "seed=0,1" in two[0]


def _record(path: Path, status: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "status": status, "task": "digits", "method": "lora", "seed": seed, "main_metric": "top1",
        "metrics": {"test/top1": 50.0}, "params": {"trainable": 10, "trainable_pct": 1.0},
        "config": {"table": {"name": "capaboost_vtab", "row": "lora"}, "task": {}},
    }))


def test_done_keys_counts_only_complete_records(tmp_path: Path) -> None:
    _record(tmp_path / "a.json", "complete", 0)
    _record(tmp_path / "b.json", "failed", 1)
    (tmp_path / "c.json").write_text("{not json")
    assert rp.done_keys(tmp_path) == {("capaboost_vtab", "lora", "digits", 0)}
    assert rp.done_keys(tmp_path / "absent") == set()


def test_cli_dry_run_prints_only_missing_runs(tmp_path: Path, capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _record(tmp_path / "runs" / "a.json", "complete", 0)
    rc = script.main(["capaboost_vtab", "--mini", "--methods", "lora", "--dry-run",
                      "--runs-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 runs planned, 1 already complete" in out
    (line,) = [x for x in out.splitlines() if x.startswith("$ ")]
    assert line.endswith(" seed=1") and f"paths.results_dir={tmp_path / 'runs'}" in line
