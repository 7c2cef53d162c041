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
    assert len(p.points) == (2 * 4 + 2 * 1) * 2 * 1  # (LoRA rows × 4 ranks + adapter rows × 1 rf) × tasks × seeds
    pt = next(x for x in p.points if x.method == "capaboost_lora" and x.task == "squad_v2" and x.budget == 4)
    assert _value(pt.overrides, "method") == "capaboost_lora"
    assert _value(pt.overrides, "method.r") == "4"
    assert _value(pt.overrides, "table.budget") == "4" and _value(pt.overrides, "table.budget_knob") == "r"
    cited = {c.key: c for c in pt.cited}
    assert cited["method.r"].value == 4 and "AdaLoRA" in cited["method.r"].source  # the budget entry's source


def test_most_specific_cited_value_wins_and_says_where_it_comes_from() -> None:
    points = {(x.method, x.task): x for x in rp.plan("capaboost_glue").points if x.seed == 42}
    qnli, rte, sst2 = points[("capaboost_lora", "qnli")], points[("lora", "rte")], points[("lora", "sst2")]
    assert _value(qnli.overrides, "method.alpha") == "32"  # run_lora_qnli.sh beats run_lora.sh's 16
    assert _value(qnli.overrides, "task.batch_size") == "64" and _value(rte.overrides, "task.batch_size") == "32"
    assert (_value(rte.overrides, "method.lr"), _value(sst2.overrides, "method.lr")) == ("0.0015", "0.0001")
    cited = {c.key: c for c in rte.cited}
    assert cited["task.epochs"].value == 60 and "run_lora.sh" in cited["task.epochs"].source
    assert cited["optim.weight_decay"].value == 0.01 and "--weight_decay 0.01" in cited["optim.weight_decay"].source
    assert cited["table.sweep.seeds"].value == [42, 43, 44]


def test_mini_overrides_beat_the_cited_values() -> None:
    (pt,) = [x for x in rp.plan("capaboost_glue", mini=True, seeds=[0]).points if x.method == "lora"]
    assert _value(pt.overrides, "task.max_length") == "64"  # mini, after run_lora.sh's 512
    assert _value(pt.overrides, "method.r") == "8" and not pt.cited  # a mini point cites nothing


def test_tasks_option_and_unknown_entries() -> None:
    p = rp.plan("capaboost_glue", only_methods=["lora"], only_tasks=["rte"], seeds=[42])
    assert [(x.method, x.task, x.seed) for x in p.points] == [("lora", "rte", 42)]
    with pytest.raises(ConfigError, match=r"--tasks \['nope'\] not in table 'capaboost_glue'"):
        rp.plan("capaboost_glue", only_tasks=["nope"])


def test_cited_item_naming_an_unknown_row_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    path = conf / "experiment" / "capaboost_vtab.yaml"
    path.write_text(path.read_text().replace("rows: [capaboost_lora]", "rows: [capaboost_lorra]"))
    with pytest.raises(ConfigError, match=r"table.sweep.cited.capaboost: rows \['capaboost_lorra'\] are not entries"):
        rp.plan("capaboost_vtab", conf=conf)


def test_table_columns_follow_the_task_entries() -> None:
    vtab = rp.table_columns("capaboost_vtab")
    assert len(vtab) == 19 and vtab[:2] == ["vtab_cifar", "vtab_caltech101"] and vtab[-1] == "vtab_smallnorb_ele"
    commonsense = rp.table_columns("smt_commonsense")
    assert commonsense[:2] == ["boolq", "piqa"] and len(commonsense) == 8
    assert rp.table_columns("capaboost_glue", mini=True) == ["synthetic_pairs"]


def test_mini_replaces_tasks_seeds_and_adds_overrides() -> None:
    p = rp.plan("smt_budget", mini=True)
    assert {x.task for x in p.points} == {"commonsense_synthetic"}
    assert {x.seed for x in p.points} == {0}  # the mini seeds replace the table's 1234
    assert len(p.points) == 2 * 3  # mini methods (only: lora, smt) × mini budgets × one seed
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
