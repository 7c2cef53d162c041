"""Plan a paper table's runs from its experiment file and turn them into Hydra multirun commands.

``conf/experiment/<table>.yaml`` carries, under ``table.sweep``, everything needed to launch the table:

.. code-block:: yaml

    table:
      sweep:
        seeds: [42, 43, 44]
        overrides: []                      # for every run of the table
        methods:                           # entry id -> Hydra overrides (one table row, or one line of a figure)
          lora: [method=lora, method.r=8]
        tasks:                             # entry id -> Hydra overrides (one table column)
          rte: [task=rte, method.lr=5.0e-4]
        cells: {}                          # "<method id>/<task id>" -> overrides for that cell only
        budgets:                           # optional budget sweep, per method entry
          lora: {knob: method.r, label: r, values: [4, 8]}
      mini:                                # the offline mini version (``--mini``): replaces seeds/tasks/budgets,
        seeds: [0, 1]                      # adds its overrides after the table's and per-method overrides
        overrides: [model=minilm]
        tasks: {synthetic_pairs: [task=synthetic_pairs]}
        methods: {smt: [method.block_size=128]}    # added to the table's method entries
        cells: {smt/synthetic_pairs: [method.block_size=64]}   # added to the table's cell overrides
        only: [lora, smt]                          # optional: the mini version keeps these method entries

A *point* is one run: method entry × task entry × budget value × seed. Its overrides are applied in the
order table → mini → method → mini method → task → cell → budget → seed, so the most specific wins.
A budget value ``v`` of knob ``k`` adds ``k=v table.budget=v table.budget_knob=<label>``.

Points are grouped per (method, task, budget) into one ``train.py -m`` multirun over their seeds; a
point whose COMPLETE record already exists (same ``tables.cell_key``) is skipped.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from peftlab.config_utils import require

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
MINI_RUNS_DIR = "results/mini/runs"
RUNS_DIR = "results/runs"


@dataclass(frozen=True)
class Point:
    """One run of a table: the entries it came from and its Hydra overrides (seed excluded)."""

    method: str
    task: str
    budget: Any
    seed: int
    overrides: tuple[str, ...]

    @property
    def group(self) -> tuple[str, str, Any]:
        return (self.method, self.task, self.budget)


@dataclass
class Plan:
    """The points of a table and the cell key each would produce."""

    table: str
    mini: bool
    points: list[Point]
    keys: dict[Point, tuple[str, str, str, int]] = field(default_factory=dict)
    skipped_methods: list[str] = field(default_factory=list)  # entries whose conf/method/<name>.yaml is absent


def experiment_names(conf: Path = CONF) -> list[str]:
    """Every ``conf/experiment/<name>.yaml`` (the tables ``reproduce.py`` knows)."""
    return sorted(p.stem for p in (conf / "experiment").glob("*.yaml"))


def compose_config(overrides: Sequence[str], conf: Path = CONF) -> DictConfig:
    """The project's config composed with ``overrides`` (no run directory: hydra nodes stay unresolved)."""
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def load_table(table: str, conf: Path = CONF) -> DictConfig:
    """The ``table`` node of ``experiment=<table>``; a ConfigError names the known tables."""
    known = experiment_names(conf)
    require(table in known, f"unknown table '{table}'; known: {known}")
    cfg = compose_config([f"experiment={table}"], conf)
    require("table" in cfg and "sweep" in cfg.table,
            f"conf/experiment/{table}.yaml has no table.sweep block (see peftlab/reproduce.py)")
    return cfg.table


def _raw(node: Any) -> Any:
    """Container without resolving interpolations (override strings may hold ``${...}`` for Hydra)."""
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


def _method_name(overrides: Iterable[str]) -> str | None:
    for o in overrides:
        if o.startswith("method="):
            return o.split("=", 1)[1]
    return None


def dedupe(overrides: Sequence[str]) -> tuple[str, ...]:
    """Keep the last value of each overridden key (later, more specific overrides win), in order."""
    last = {o.split("=", 1)[0]: i for i, o in enumerate(overrides)}
    return tuple(o for i, o in enumerate(overrides) if last[o.split("=", 1)[0]] == i)


def plan(table: str, mini: bool = False, seeds: Sequence[int] | None = None,
         only_methods: Sequence[str] | None = None, conf: Path = CONF) -> Plan:
    """Expand ``table.sweep`` (and ``table.mini`` when ``mini``) into points (not yet composed)."""
    node = load_table(table, conf)
    sweep, mini_node = _raw(node.sweep), _raw(node.get("mini")) or {}
    require(not mini or bool(mini_node), f"table '{table}' has no table.mini block: no mini version")
    methods: dict[str, list[str]] = sweep["methods"]
    tasks: dict[str, list[str]] = mini_node.get("tasks", sweep["tasks"]) if mini else sweep["tasks"]
    budgets: dict[str, dict[str, Any]] = dict(sweep.get("budgets") or {})
    if mini and "budgets" in mini_node:
        budgets = mini_node["budgets"]
    seed_list = list(seeds) if seeds else list(mini_node.get("seeds", sweep["seeds"]) if mini else sweep["seeds"])
    if mini and mini_node.get("only"):  # the mini version may keep a subset of the rows
        methods = {m: methods[m] for m in mini_node["only"]}
    if only_methods:
        unknown = sorted(set(only_methods) - set(methods))
        require(not unknown, f"--methods {unknown} not in table '{table}'; its methods: {sorted(methods)}")
        methods = {m: methods[m] for m in only_methods}
    out = Plan(table, mini, [])
    for m, m_over in methods.items():
        name = _method_name(m_over)
        if name is not None and not (conf / "method" / f"{name}.yaml").exists():
            out.skipped_methods.append(m)
            continue
        base = [*sweep.get("overrides", []), *(mini_node.get("overrides", []) if mini else []), *m_over,
                *((mini_node.get("methods") or {}).get(m, []) if mini else [])]
        knob = budgets.get(m)
        for t, t_over in tasks.items():
            cell = [*(sweep.get("cells") or {}).get(f"{m}/{t}", []),
                    *((mini_node.get("cells") or {}).get(f"{m}/{t}", []) if mini else [])]
            for value in (knob["values"] if knob else [None]):
                budget = [] if knob is None else [f"{knob['knob']}={value}", f"table.budget={value}",
                                                  f"table.budget_knob={knob.get('label', knob['knob'])}"]
                overrides = dedupe([*base, *t_over, *cell, *budget])
                out.points.extend(Point(m, t, value, s, overrides) for s in seed_list)
    return out


def resolve_keys(p: Plan, conf: Path = CONF) -> Plan:
    """Compose one config per (method, task, budget) and fill each point's (table, row, task, seed) key."""
    composed: dict[tuple[str, str, Any], tuple[str, str, str]] = {}
    for point in p.points:
        if point.group not in composed:
            cfg = compose_config([f"experiment={p.table}", *point.overrides, f"seed={point.seed}"], conf)
            composed[point.group] = (str(cfg.table.name), str(cfg.table.row), str(cfg.task.name))
        table, row, task = composed[point.group]
        p.keys[point] = (table, row, task, point.seed)
    return p


def pending(p: Plan, done: set[tuple[str, str, str, int]]) -> list[Point]:
    """Points whose cell has no complete record yet."""
    return [pt for pt in p.points if p.keys[pt] not in done]


def commands(points: Sequence[Point], table: str, *, launcher: str | None = None, sweep_root: str,
             extra: Sequence[str] = (), python: str = sys.executable) -> list[list[str]]:
    """One ``train.py -m`` multirun per (method, task, budget) over the seeds still missing; ``extra`` wins."""
    groups: dict[tuple[str, str, Any], list[Point]] = {}
    for pt in points:
        groups.setdefault(pt.group, []).append(pt)
    cmds = []
    for (m, t, b), pts in groups.items():
        seeds = ",".join(str(pt.seed) for pt in pts)
        sub = f"{m}_{t}" + ("" if b is None else f"_b{b}")
        launch = [f"hydra/launcher={launcher}"] if launcher else []
        cmd = [python, "train.py", "-m", f"experiment={table}",
               *dedupe([*pts[0].overrides, f"hydra.sweep.dir={sweep_root}/{sub}", *launch, *extra]), f"seed={seeds}"]
        cmds.append(cmd)
    return cmds


def shell(cmd: Sequence[str]) -> str:
    """A command as one copy-pasteable shell line."""
    return shlex.join(cmd)


def done_keys(runs_dir: str | Path) -> set[tuple[str, str, str, int]]:
    """Cell keys of the COMPLETE records under ``runs_dir`` (running/failed ones are run again)."""
    from peftlab.tables import cell_key, load_records

    if not Path(runs_dir).exists():
        return set()
    records = load_records(runs_dir)
    for path, reason in records.refused:
        print(f"[reproduce] refused record {path}: {reason}", file=sys.stderr)
    return {cell_key(r) for r in records.complete}


def is_budget_table(table: str, conf: Path = CONF) -> bool:
    """A table with a budget sweep gets a score-vs-trainable-parameters figure."""
    return bool(_raw(load_table(table, conf).sweep).get("budgets"))
