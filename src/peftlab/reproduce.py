"""Plan a paper table's runs from its experiment file and turn them into Hydra multirun commands.

``conf/experiment/<table>.yaml`` carries, under ``table.sweep``, everything needed to launch the table:

.. code-block:: yaml

    table:
      protocol: "lora: run_lora.sh; ..."   # which protocol each row follows (printed under the table)
      # (a protocol shared by several tables lives in conf/protocol/<name>.yaml, included by the experiment's
      # defaults as ``- /protocol/<name>``: its values count as the experiment's own body)
      sources:                             # the source of every value the file's body sets (dotted keys or
        optim.weight_decay: "..."          # prefixes), and of the seeds (key table.sweep.seeds)
      sweep:
        seeds: [42, 43, 44]
        overrides: []                      # for every run of the table
        methods:                           # entry id -> Hydra overrides (one table row, or one line of a figure)
          lora: [method=lora]
        tasks:                             # entry id -> Hydra overrides (one table column)
          rte: [task=rte]
        cited:                             # the cited values of the cells, name -> item; an item applies to the
          lora_rte:                        # cells of its rows (method entries), methods (method config names) and
            rows: [lora]                   # tasks (task entries), absent = all; later items win
            tasks: [rte]
            source: "LINs-lab/CapaBoost scripts/run_lora.sh"
            set: {method.lr: 1.5e-3, task.epochs: 60}
        cells: {}                          # "<method id>/<task id>" -> overrides for that cell only (uncited)
        budgets:                           # optional budget sweep, per method entry (source: where the values are from)
          lora: {knob: method.r, label: r, values: [4, 8], source: "..."}
      mini:                                # the offline mini version (``--mini``): replaces seeds/tasks/budgets,
        seeds: [0, 1]                      # adds its overrides after the table's, the method's and the cited ones
        overrides: [model=minilm]
        tasks: {synthetic_pairs: [task=synthetic_pairs]}
        methods: {smt: [method.block_size=128]}    # added to the table's method entries
        cells: {smt/synthetic_pairs: [method.block_size=64]}   # added to the table's cell overrides
        only: [lora, smt]                          # optional: the mini version keeps these method entries

A *point* is one run: method entry × task entry × budget value × seed. Its overrides are applied in the
order table → method → task → cited → cell → budget, so the most specific wins; a mini point: table → method →
cited (the items without ``tasks``) → mini → mini method → task → cell → mini cell → budget (mini wins).
A budget value ``v`` of knob ``k`` adds ``k=v table.budget=v table.budget_knob=<label>``. A full point also carries
its cited values (:class:`Cited`: key, value, source; the body's values and the seeds with ``table.sources``, then
the matching ``cited`` items, then the budget knob): ``tests/integration/test_experiments.py`` checks that every
cell's resolved config equals them and that they cover the hyper-parameters a table must cite.

Points are grouped per (method, task, budget) into one ``train.py -m`` multirun over their seeds; a
point whose COMPLETE record already exists (same ``tables.cell_key``) is skipped.
"""

from __future__ import annotations

import re
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
class Cited:
    """A value an experiment file cites for a cell: config key, value, and where it comes from."""

    key: str
    value: Any
    source: str | None  # None: the file sets the value without citing it (a test failure)


@dataclass(frozen=True)
class Point:
    """One run of a table: the entries it came from and its Hydra overrides (seed excluded)."""

    method: str
    task: str
    budget: Any
    seed: int
    overrides: tuple[str, ...]
    cited: tuple[Cited, ...] = field(default=(), compare=False)  # full plans only (a mini run cites nothing)

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


def override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override syntax (YAML value from an experiment file's ``set`` mapping)."""
    return f"{key}={_hydra_value(value)}"


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    text = str(value)
    return text if re.fullmatch(r"[\w./-]+", text) else "'" + text.replace("'", "\\'") + "'"


def leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → value of every leaf of a nested mapping (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _source(sources: dict[str, str], key: str) -> str | None:
    """The source given for ``key`` or for its longest dotted prefix."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in sources:
            return sources[".".join(parts[:n])]
    return None


def body_values(table: str, conf: Path = CONF) -> dict[str, Any]:
    """Dotted key → value of what ``conf/experiment/<table>.yaml`` sets outside ``defaults``, ``tags``, ``table``,
    after what the shared protocol files its defaults include (``- /protocol/<name>``) set."""
    def load(path: Path) -> dict[str, Any]:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        assert isinstance(raw, dict)
        return raw

    experiment = load(conf / "experiment" / f"{table}.yaml")
    shared = [d for d in experiment.get("defaults") or [] if isinstance(d, str) and d.startswith("/protocol/")]
    out: dict[str, Any] = {}
    for raw in [*(load(conf / f"{d.lstrip('/')}.yaml") for d in shared), experiment]:
        out.update(leaves({k: v for k, v in raw.items() if k not in ("defaults", "tags", "table")}))
    return out


def _items(sweep: dict[str, Any], table: str, methods: Iterable[str], tasks: Iterable[str]) -> list[dict[str, Any]]:
    """The ``cited`` items of a sweep (a mapping name → item, applied in order), checked: a source, a ``set`` mapping,
    and ``rows`` (method entries) and ``tasks`` (task entries) that exist; ``methods`` selects method config names."""
    items = sweep.get("cited") or {}
    require(isinstance(items, dict), f"conf/experiment/{table}.yaml table.sweep.cited must map names to items")
    for name, item in items.items():
        where = f"conf/experiment/{table}.yaml table.sweep.cited.{name}"
        require(isinstance(item, dict) and isinstance(item.get("set"), dict) and bool(item.get("source")),
                f"{where}: needs a 'source' and a 'set' mapping of config keys to values")
        for sel, known in (("rows", set(methods)), ("tasks", set(tasks))):
            unknown = sorted(set(item.get(sel) or []) - known)
            require(not unknown, f"{where}: {sel} {unknown} are not entries of the sweep; known: {sorted(known)}")
    return list(items.values())


def _applies(item: dict[str, Any], method: str, method_name: str | None, task: str) -> bool:
    """Whether a cited item covers a cell: its rows (method entries), method names and tasks (absent = all)."""
    return (method in (item.get("rows") or [method]) and method_name in (item.get("methods") or [method_name])
            and task in (item.get("tasks") or [task]))


def plan(table: str, mini: bool = False, seeds: Sequence[int] | None = None,
         only_methods: Sequence[str] | None = None, only_tasks: Sequence[str] | None = None,
         conf: Path = CONF) -> Plan:
    """Expand ``table.sweep`` (and ``table.mini`` when ``mini``) into points (not yet composed)."""
    node = load_table(table, conf)
    sweep, mini_node = _raw(node.sweep), _raw(node.get("mini")) or {}
    require(not mini or bool(mini_node), f"table '{table}' has no table.mini block: no mini version")
    methods: dict[str, list[str]] = sweep["methods"]
    tasks: dict[str, list[str]] = mini_node.get("tasks", sweep["tasks"]) if mini else sweep["tasks"]
    items = _items(sweep, table, methods, sweep["tasks"])
    budgets: dict[str, dict[str, Any]] = dict(sweep.get("budgets") or {})
    if mini and "budgets" in mini_node:
        budgets = mini_node["budgets"]
    seed_list = list(seeds) if seeds else list(mini_node.get("seeds", sweep["seeds"]) if mini else sweep["seeds"])
    if mini and mini_node.get("only"):  # the mini version may keep a subset of the rows
        methods = {m: methods[m] for m in mini_node["only"]}
    for flag, chosen, entries in (("--methods", only_methods, methods), ("--tasks", only_tasks, tasks)):
        unknown = sorted(set(chosen or []) - set(entries))
        require(not unknown, f"{flag} {unknown} not in table '{table}'{' (mini)' if mini else ''}; "
                f"its entries: {sorted(entries)}")
    methods = {m: methods[m] for m in only_methods} if only_methods else methods
    tasks = {t: tasks[t] for t in only_tasks} if only_tasks else tasks
    sources = _raw(node.get("sources")) or {}
    body = [] if mini else [*(Cited(k, v, _source(sources, k)) for k, v in body_values(table, conf).items()),
                            Cited("table.sweep.seeds", list(sweep["seeds"]), _source(sources, "table.sweep.seeds"))]
    out = Plan(table, mini, [])
    for m, m_over in methods.items():
        name = _method_name(m_over)
        if name is not None and not (conf / "method" / f"{name}.yaml").exists():
            out.skipped_methods.append(m)
            continue
        mini_over = [*mini_node.get("overrides", []), *(mini_node.get("methods") or {}).get(m, [])] if mini else []
        knob = budgets.get(m)
        for t, t_over in tasks.items():
            matching = [it for it in items if _applies(it, m, name, t)]
            cited = [override(k, v) for it in matching for k, v in it["set"].items()]
            cell = [*(sweep.get("cells") or {}).get(f"{m}/{t}", []),
                    *((mini_node.get("cells") or {}).get(f"{m}/{t}", []) if mini else [])]
            # full: the cited values beat the entries; mini: its own overrides beat the cited ones
            entries = [*m_over, *cited, *mini_over, *t_over] if mini else [*m_over, *t_over, *cited]
            values = {c.key: c for c in body}
            values.update({k: Cited(k, v, it["source"]) for it in matching for k, v in it["set"].items()})
            for value in (knob["values"] if knob else [None]):
                budget = [] if knob is None else [f"{knob['knob']}={value}", f"table.budget={value}",
                                                  f"table.budget_knob={knob.get('label', knob['knob'])}"]
                overrides = dedupe([*sweep.get("overrides", []), *entries, *cell, *budget])
                point_cited = {} if mini else dict(values)
                if knob is not None and not mini:
                    point_cited[knob["knob"]] = Cited(knob["knob"], value, knob.get("source"))
                out.points.extend(Point(m, t, value, s, overrides, tuple(point_cited.values())) for s in seed_list)
    return out


def table_columns(table: str, mini: bool = False, conf: Path = CONF) -> list[str]:
    """The columns the table's records give, in the order of its task entries: each task's name, or its evaluation
    sets (commonsense). A table's averages name these columns and are shown only when every one has a value."""
    node = load_table(table, conf)
    sweep, mini_node = _raw(node.sweep), _raw(node.get("mini")) or {}
    tasks: dict[str, list[str]] = mini_node.get("tasks", sweep["tasks"]) if mini else sweep["tasks"]
    base = [f"experiment={table}", *sweep.get("overrides", []), *(mini_node.get("overrides", []) if mini else [])]
    columns: list[str] = []
    for t_over in tasks.values():
        task = compose_config([*base, *t_over], conf).task
        columns += [str(s) for s in task.eval_sets] if "eval_sets" in task else [str(task.name)]
    return list(dict.fromkeys(columns))


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


def memory_plan(p: Plan, extra: Sequence[str] = (), conf: Path = CONF) -> list[Any]:
    """One :class:`peftlab.memory.cells.CellPlan` per cell (method × task × budget) of ``p``, in plan order: the
    composed config of the cell's first seed (with the ``extra`` overrides a launch adds), its GPUs, predicted peaks
    per phase and optimizer steps."""
    from peftlab.memory.cells import plan_cell

    groups: dict[tuple[str, str, Any], list[Point]] = {}
    for pt in p.points:
        groups.setdefault(pt.group, []).append(pt)
    cells = []
    for (m, t, b), pts in groups.items():
        cfg = compose_config([f"experiment={p.table}", *dedupe([*pts[0].overrides, *extra]), f"seed={pts[0].seed}"],
                             conf)
        cells.append(plan_cell(f"{m}/{t}" + ("" if b is None else f" budget {b}"), [pt.seed for pt in pts], cfg))
    return cells
