"""Every paper-table experiment file composes, with every method/task entry of its full and mini plans, into a
config whose method/task/model validate (no data or weights loaded); every cell of every full plan resolves to the
values its experiment file cites, and the cited values cover the hyper-parameters a table must state; every
command an experiment file or a doc shows composes; wandb tags compose; one tiny mini point runs end to end
through scripts/reproduce.py and a second call skips it."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from peftlab import budget, train
from peftlab import reproduce as rp
from tests.conftest import ROOT
from tests.integration.cli import reproduce_script

TABLES = rp.experiment_names()
REQUIRED = {"smt_commonsense", "capaboost_glue", "capaboost_squad", "capaboost_vtab", "sparse_peers", "smt_budget"}
# Method knobs a cell must cite (issue 15: rank/α/d/density, adapter size, SMT's budget); "a|b": whichever is set.
METHOD_KNOBS = {
    "lora": ("r", "alpha", "dropout", "targets"),
    "dora": ("r", "alpha", "dropout", "targets"),
    "capaboost_lora": ("r", "alpha", "dropout", "targets", "d", "density"),
    "adapter_pfeiffer": ("bottleneck|reduction_factor",),
    "capaboost_adapter": ("bottleneck|reduction_factor", "placement", "d", "density"),
    "smt": ("budget_unit", "budget", "block_size", "targets", "warmup_steps", "smt_lr"),
}
TRAINING = ("method.lr", "task.epochs", "task.batch_size", "task.max_length", "task.max_seq_length", "task.cutoff_len",
            "optim.warmup_steps", "optim.weight_decay", "optim.betas", "trainer.precision", "report.value",
            "report.select")


def _covering(points: list[rp.Point]) -> list[rp.Point]:
    """Fewest points that use every method entry, task entry and (method, budget) once."""
    out, seen = [], set()
    for pt in points:
        new = {("m", pt.method), ("t", pt.task), ("b", pt.method, pt.budget)} - seen
        if new and pt.seed == points[0].seed:
            out.append(pt)
            seen |= new
    return out


@functools.cache
def _cells(table: str) -> tuple[rp.Point, ...]:
    """One point (the first seed) of every (method, task, budget) of the full plan."""
    points = rp.plan(table).points
    return tuple(pt for pt in points if pt.seed == points[0].seed)


@functools.cache
def _compose(table: str, point: rp.Point) -> DictConfig:
    """The composed config of a point (cached: several tests read the same cells; none modifies them)."""
    return rp.compose_config([f"experiment={table}", *point.overrides, f"seed={point.seed}"])


def _value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def required_keys(cfg: DictConfig) -> list[str]:
    """What every cell must cite: lr, epochs, batch, max length, warm-up, weight decay, betas, precision, the reported
    value (and its selection), the seeds and the method's knobs."""
    keys = ["method.lr", "task.epochs", "task.batch_size", "optim.weight_decay", "optim.betas", "trainer.precision",
            "report.value", "table.sweep.seeds",
            "optim.warmup_steps" if cfg.optim.warmup_steps is not None else "optim.warmup_ratio",
            *(f"task.{k}" for k in ("max_length", "max_seq_length", "doc_stride", "cutoff_len") if k in cfg.task)]
    if cfg.report.value == "val_best":
        keys.append("report.select")
    for knob in METHOD_KNOBS.get(cfg.method.name, ()):
        options = knob.split("|")
        keys.append("method." + next((o for o in options if cfg.method.get(o) is not None), options[0]))
    return keys


def test_every_required_table_has_an_experiment_file() -> None:
    assert set(TABLES) >= REQUIRED


@pytest.mark.parametrize("mini", [False, True], ids=["full", "mini"])
@pytest.mark.parametrize("table", TABLES)
def test_experiment_composes_and_validates(table: str, mini: bool) -> None:
    p = rp.plan(table, mini=mini)
    assert p.points, f"{table}: empty plan"
    for point in _covering(p.points):
        cfg = _compose(table, point)
        train.validate_config(cfg)  # model spec, method and task configs: unknown keys / bad values raise ConfigError
        assert cfg.table.name == table
        assert cfg.table.row and "None" not in str(cfg.table.row), cfg.table.row
        assert str(cfg.method.name) in str(cfg.table.row) or "table.row" in " ".join(point.overrides)
        tags = list(cfg.tags)
        for prefix, value in (("table", table), ("method", cfg.method.name), ("task", cfg.task.name),
                              ("seed", point.seed), ("budget", point.budget)):
            assert f"{prefix}:{value}" in tags, (prefix, tags)
        if mini:
            assert cfg.trainer.accelerator == "cpu" and cfg.model.name.startswith(("tiny_", "minilm"))


@pytest.mark.parametrize("table", TABLES)
def test_every_cell_resolves_to_its_cited_values(table: str) -> None:
    """The table-driven check: for every cell, each value the experiment file cites (its body with table.sources,
    the matching table.sweep.cited items, the budget knob) has a source and equals the composed config, and the
    cited values cover the hyper-parameters of :func:`required_keys`."""
    problems = []
    for point in _cells(table):
        cfg, cell = _compose(table, point), f"{point.method}/{point.task}" + ("" if point.budget is None
                                                                             else f" budget {point.budget}")
        cited = {c.key: c for c in point.cited}
        problems += [f"{cell}: {k} is not cited (set it in the experiment with its source)"
                     for k in required_keys(cfg) if k not in cited]
        for c in cited.values():
            if not c.source:
                problems.append(f"{cell}: {c.key}={c.value!r} has no source (table.sources)")
            elif _value(cfg, c.key) != c.value:
                problems.append(f"{cell}: {c.key} resolves to {_value(cfg, c.key)!r}, cited {c.value!r} ({c.source})")
        assert point.seed in cited["table.sweep.seeds"].value
    assert not problems, "\n".join(problems)


def _training(cfg: DictConfig) -> dict[str, Any]:
    return {k: _value(cfg, k) for k in TRAINING}


@pytest.mark.parametrize("table", ["capaboost_glue", "capaboost_squad"])
def test_plain_and_capaboost_rows_share_the_released_script(table: str) -> None:
    """Rows of one table follow one protocol per module: the plain LoRA/adapter row trains as its CapaBoost row
    (the released script's "not share" branch), in every column."""
    cells = {(pt.method, pt.task, pt.budget): _compose(table, pt) for pt in _cells(table)}
    for plain, boosted, knobs in (("lora", "capaboost_lora", ("r", "alpha", "targets", "dropout")),
                                  ("adapter_pfeiffer", "capaboost_adapter", ("bottleneck", "reduction_factor"))):
        pairs = [(cfg, cells[(boosted, t, b)]) for (m, t, b), cfg in cells.items() if m == plain]
        assert pairs, (table, plain)
        for a, b in pairs:
            assert _training(a) == _training(b), (table, plain, a.task.name)
            assert {k: a.method[k] for k in knobs} == {k: b.method[k] for k in knobs}, (table, plain, a.task.name)


def test_capaboost_glue_adapter_cells_follow_run_adapter_sh() -> None:
    """The released adapter script (LINs-lab/CapaBoost scripts/run_adapter.sh): batch 64, length 256, warm-up 1000,
    lr 5e-4, reduction factor 24 and its own epochs, not the LoRA script's settings."""
    for point in _cells("capaboost_glue"):
        if "adapter" not in point.method:
            continue
        cfg = _compose("capaboost_glue", point)
        assert (cfg.task.batch_size, cfg.task.max_length, cfg.optim.warmup_steps, cfg.method.lr,
                cfg.method.reduction_factor) == (64, 256, 1000, 5.0e-4, 24), point
        assert cfg.task.epochs == (10 if point.task in ("sst2", "qqp", "qnli") else 30), point
        sources = {c.key: c.source for c in point.cited}
        assert all("run_adapter.sh" in str(sources[k]) for k in ("task.batch_size", "task.epochs", "method.lr")), point


def test_capaboost_squad_has_the_padapter_rows() -> None:
    """The released CapaBoost-PAdapter SQuAD scripts (run_multimask_adapter_squad{,v2}.sh): reduction factor 24,
    lr 1e-3, 20 epochs, batch 16, on both SQuAD versions."""
    rows = {}
    for point in _cells("capaboost_squad"):
        cfg = _compose("capaboost_squad", point)
        rows.setdefault(str(cfg.table.row), set()).add(str(cfg.task.name))
        if point.method == "capaboost_adapter":
            assert (cfg.method.reduction_factor, cfg.method.lr, cfg.task.epochs, cfg.task.batch_size,
                    cfg.method.d, cfg.method.density) == (24, 1.0e-3, 20, 16, 2, 0.5)
    assert rows["capaboost_adapter rf=24"] == rows["adapter_pfeiffer rf=24"] == {"squad", "squad_v2"}


@pytest.mark.parametrize("table", ["smt_commonsense", "smt_budget", "sparse_peers"])
def test_smt_rows_use_the_official_adam_betas(table: str) -> None:
    """HectorHHZ/Sparse_Matrix_Tuning deepspeed/fine_tune.py: FusedAdam betas (0.9, 0.95) in both phases."""
    smt = [pt for pt in _cells(table) if pt.overrides[0] == "method=smt"]
    assert smt
    for point in smt:
        assert list(_compose(table, point).optim.betas) == [0.9, 0.95]
        assert "Sparse_Matrix_Tuning" in str({c.key: c.source for c in point.cited}["optim.betas"])


# ---------------------------------------------------------------------------------------------- shown commands
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "conf").rglob("*.yaml"))]
COMMAND = re.compile(r"python (train\.py|scripts/reproduce\.py)\b([^`#\n]*)")


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, arguments) of every ``python train.py`` / ``python scripts/reproduce.py`` command a doc or a
    config file shows (continuation lines joined; placeholders such as ``<dir>`` and elided ``...`` commands left
    out: they do not run as written)."""
    out = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*#?\s*", " ", path.read_text())  # join continuation lines
        for n, line in enumerate(text.splitlines(), 1):
            for match in COMMAND.finditer(line):
                args = match.group(2)
                if "..." in args or "…" in args or "$" in args:
                    continue
                tokens = [t for t in shlex.split(re.sub(r"<[^>]*>", "\0", args)) if "\0" not in t]
                out.append((f"{path.relative_to(ROOT)}:{n}", match.group(1), tokens))
    return out


def _variants(overrides: list[str]) -> list[list[str]]:
    """A multirun's points, one swept value changed at a time (Hydra's own override parser)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    base = [o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
            for o in parsed]
    out = [base]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())[1:]
            out += [[*base[:i], f"{o.get_key_element()}={v}", *base[i + 1:]] for v in values]
    return out


def test_every_shown_command_composes() -> None:
    """Every command a doc or config shows runs as written (composes and validates, data aside); a ``train.py
    experiment=<table>`` command that names a table cell gives exactly that cell's cited values."""
    script = reproduce_script()
    commands = shown_commands()
    assert len(commands) > 30, commands
    problems = []
    for where, name, args in commands:
        try:
            if name == "scripts/reproduce.py":
                a = script.parse(args)
                if a.table:
                    rp.plan(a.table, a.mini, a.seeds, a.methods, a.tasks)
                continue
            for overrides in _variants([t for t in args if t != "-m"]):
                cfg = rp.compose_config(overrides)
                train.validate_config(cfg)
                problems += _cell_mismatch(where, overrides, cfg)
        except Exception as err:  # noqa: BLE001 - report every failing command at once
            problems.append(f"{where}: {name} {shlex.join(args)}: {type(err).__name__}: {err}")
    assert not problems, "\n".join(problems)


def _cell_mismatch(where: str, overrides: list[str], cfg: DictConfig) -> list[str]:
    """A ``train.py experiment=<table>`` command that sets none of the cited keys itself must equal the full-plan
    cell of the same method, task and budget on every cited value."""
    table = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), None)
    if table is None:
        return []
    set_keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    for point in _cells(table):
        ref = _compose(table, point)
        if (ref.method.name, ref.task.name, ref.table.budget) != (cfg.method.name, cfg.task.name, cfg.table.budget):
            continue
        return [f"{where}: {c.key} = {_value(cfg, c.key)!r}, its table cell cites {c.value!r}" for c in point.cited
                if c.key not in set_keys and c.key != "table.sweep.seeds" and _value(cfg, c.key) != c.value]
    return [f"{where}: experiment={table} with method {cfg.method.name}, task {cfg.task.name} is no cell of the table"]


def test_shown_commands_are_found() -> None:
    """The command finder sees the commands the issue names (continuations joined, env prefixes allowed)."""
    found = {(w.split(":")[0], n, " ".join(a)) for w, n, a in shown_commands()}
    assert ("conf/experiment/capaboost_vtab.yaml", "train.py", "experiment=capaboost_vtab task=vtab/dtd") in found
    assert any(w == "README.md" and a.startswith("-m method=full,lora") for w, _, a in found)


# ---------------------------------------------------------------------------------------------- wandb, launchers, e2e
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


def test_tiny_mini_point_end_to_end_then_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``scripts/reproduce.py`` (its main, in this process) launches the point's ``train.py -m`` child."""
    runs = tmp_path / "runs"
    args = ["capaboost_vtab", "--mini", "--methods", "lora", "--seeds", "0", "--runs-dir", str(runs), "--no-tables",
            "--", "task.epochs=1", "+trainer.limit_train_batches=4", f"hydra.sweep.dir={tmp_path}/multirun"]
    script = reproduce_script()
    assert script.main(args) == 0, capsys.readouterr().err[-3000:]
    (path,) = runs.rglob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "complete"
    assert record["config"]["table"] == {**record["config"]["table"], "name": "capaboost_vtab", "row": "lora"}
    assert "table:capaboost_vtab" in record["tags"] and record["model"] == "tiny_vit"
    assert record["command"].startswith("python train.py experiment=capaboost_vtab ") and "seed=0" in record["command"]
    capsys.readouterr()
    assert script.main([*args[:args.index("--")], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 already complete" in out and "0 to run" in out


def _distinct_method_cells() -> list[tuple[str, rp.Point]]:
    """One cell per (table, model, method config, head): what decides whether the method fits the model."""
    out, seen = [], set()
    for table in TABLES:
        for point in _cells(table):
            cfg = _compose(table, point)
            key = (cfg.model.name, json.dumps(OmegaConf.to_container(cfg.method, resolve=True), sort_keys=True),
                   str(cfg.task.get("num_labels")))
            if key not in seen:
                seen.add(key)
                out.append((table, point))
    return out


METHOD_CELLS = _distinct_method_cells()


@pytest.mark.parametrize(("table", "point"), [
    # SHiRA draws its random supports over LLaMA-7B's 6.5G weight elements on the CPU: ~4 min, so slow
    pytest.param(t, p, marks=[pytest.mark.slow] if p.method == "shira" and "llama" in _compose(t, p).model.name else [])
    for t, p in METHOD_CELLS], ids=[f"{t}:{p.method}:{p.task}:{p.budget}" for t, p in METHOD_CELLS])
def test_every_cell_applies_its_method_to_its_model(table: str, point: rp.Point) -> None:
    """The method of every cell is applied to the cell's model at its real shape (meta device, no download), as a run
    applies it before any data loads: a budget the model cannot hold (e.g. SPT at rank 8 on LLaMA-7B) fails here, not
    after a researcher's job has queued for a GPU."""
    cfg = _compose(table, point)
    assert budget.count(cfg).trainable > 0
