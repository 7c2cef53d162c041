"""The memory plan of a paper table before anything launches (``python scripts/reproduce.py <table> --plan``).

For every cell (method × task × budget of :func:`peftlab.reproduce.plan`; the seeds of a cell share it): the trainer
strategy and the GPUs it uses, each phase's predicted peak per GPU with the margin of :func:`report.with_margin` and
the optimizer engine that gives it, the GPU sizes that hold it, and the number of optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import DictConfig

from peftlab.errors import PeftlabError
from peftlab.memory.predict import predict_config
from peftlab.memory.report import fits, gib, memory_setting, with_margin
from peftlab.memory.states import GiB, Prediction

# training examples of the real tasks, for the step count (synthetic tasks carry task.num_train); "~": the count a
# run trains on differs (commonsense: the file's ~170k rows minus task.val_set_size; SQuAD: windows, ≥ examples)
TRAIN_EXAMPLES: dict[str, tuple[int, bool]] = {  # task name → (examples, exact)
    "commonsense": (170_000, False),  # LLM-Adapters commonsense_170k.json ("170k rows", zwhe99/commonsense_170k)
    "cola": (8_551, True), "sst2": (67_349, True), "mrpc": (3_668, True), "qqp": (363_846, True),
    "stsb": (5_749, True), "mnli": (392_702, True), "mnli_mm": (392_702, True), "qnli": (104_743, True),
    "rte": (2_490, True),  # nyu-mll/glue train splits
    "squad": (87_599, False), "squad_v2": (130_319, False),  # rajpurkar/squad, rajpurkar/squad_v2 train splits
}
VTAB_TRAIN = 1_000  # VTAB-1k and its stand-in digits: train800val200 (NOAH's protocol, conf/task_base/vtab.yaml)
# every prediction made in this process, by what it is computed from: the model node, the method node, the task (by
# name: its head, labels and loss) and the memory setting (batch × seq, precision, checkpointing, device, offloads,
# AdamW's foreach); cells of any table with an equal key share one prediction (seeds, other tables' equal rows)
PREDICTIONS: dict[tuple[str, str, str, str], Prediction] = {}


@dataclass
class CellPlan:
    """What one cell of a table will run and need."""

    cell: str  # "<method entry>/<task entry>[ budget <value>]"
    seeds: list[int]
    gpus: str  # e.g. "1 GPU (trainer.strategy=auto)"
    steps: str  # optimizer steps, "~" when the example count is approximate
    prediction: Prediction | None = None
    error: str | None = None  # the cell's config fails before training (the message a run would print)
    needed: dict[str, float] = field(default_factory=dict)  # phase label → bytes per GPU with the margin
    note: str | None = None  # what the per-GPU figures leave out for this trainer (:func:`layout_note`)

    @property
    def peak(self) -> float:
        return max(self.needed.values(), default=0.0)

    def describe(self) -> str:
        if self.error:
            return f"{self.cell}: fails before training: {self.error}"
        assert self.prediction is not None
        phases = "; ".join(
            f"{label} {gib(self.needed[label])} GiB ({s.engine}" + (f", {gib(s.offloaded)} GiB CPU" if s.offloaded
                                                                     else "") + ")"
            for label, s in ((self.prediction.labels[k], s) for k, s in self.prediction.phases.items()))
        return (f"{self.cell} (seeds {','.join(map(str, self.seeds))}): {self.gpus}; per GPU with the margin: "
                f"{phases}; fits one GPU of: {fits(int(self.prediction.peak))} GiB; {self.steps} optimizer steps"
                + (f" ({self.note})" if self.note else ""))


def gpus(cfg: DictConfig) -> str:
    """The processes the trainer config starts: its strategy, devices and nodes."""
    t = cfg.trainer
    strategy = t.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", "")).rsplit(".", 1)[-1]
    devices, nodes = t.get("devices", 1), t.get("num_nodes", 1)
    kind = ("GPU", "GPUs") if t.get("accelerator") in ("gpu", "cuda") else ("CPU process", "CPU processes")
    count = "every GPU of the node" if devices == -1 else f"{devices} {kind[devices != 1]}"
    return f"{count}{f' × {nodes} nodes' if nodes != 1 else ''} (trainer.strategy={name})"


def layout_note(cfg: DictConfig) -> str | None:
    """What the predicted per-GPU figures leave out when the trainer starts several processes; None for one."""
    t = cfg.trainer
    strategy = t.get("strategy", "auto")
    name = (strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))).lower()
    if "fsdp" in name:
        return ("FSDP's sharded layout is not predicted: the figures are one process holding the whole model, "
                "more than FULL_SHARD keeps per GPU on 2+ GPUs for weights, gradients and optimizer state; its "
                "all-gather and reduce-scatter buffers are not counted")
    if t.get("devices", 1) != 1 or t.get("num_nodes", 1) != 1:
        return "DDP: every GPU holds this; its gradient buckets (up to one more copy of the gradients) not counted"
    return None


def optimizer_steps(cfg: DictConfig) -> str:
    """Epochs × ⌈examples / global batch⌉ / accumulated batches, capped by ``trainer.max_steps``."""
    task = cfg.task
    if task.get("num_train"):
        examples, exact = int(task.num_train), True
    elif task.get("family") in ("vtab", "digits"):  # digits: the same train800val200 split
        examples, exact = VTAB_TRAIN, True
    elif task.name in TRAIN_EXAMPLES:
        examples, exact = TRAIN_EXAMPLES[task.name]
        examples -= int(task.get("val_set_size") or 0)
    else:
        return "unknown (no training-set size known for task '" + str(task.name) + "')"
    t = cfg.trainer
    world = (t.devices if isinstance(t.devices, int) and t.devices > 0 else 1) * t.get("num_nodes", 1)
    per_epoch = math.ceil(math.ceil(examples / (task.batch_size * world)) / t.get("accumulate_grad_batches", 1))
    steps = per_epoch * int(task.epochs)
    if t.get("max_steps", -1) not in (-1, None):
        steps = min(steps, int(t.max_steps))
    return f"{'' if exact else '~'}{steps:,}" + ("" if world > 1 or t.devices != -1 else " (per process count)")


def plan_cell(cell: str, seeds: list[int], cfg: DictConfig) -> CellPlan:
    """The plan of one cell from its composed config; the prediction is computed once per :data:`PREDICTIONS` key."""
    out = CellPlan(cell, seeds, gpus(cfg), optimizer_steps(cfg), note=layout_note(cfg))
    device = "cpu" if cfg.trainer.get("accelerator") == "cpu" else "cuda"
    try:
        setting = memory_setting(cfg, {"precision": str(cfg.trainer.precision), "device": device})
        key = (str(cfg.model), str(cfg.method), str(cfg.task.get("name")), repr(setting))
        if key not in PREDICTIONS:
            PREDICTIONS[key] = predict_config(cfg, setting)
        out.prediction = PREDICTIONS[key]
    except PeftlabError as err:
        out.error = str(err)
        return out
    out.needed = {out.prediction.labels[k]: with_margin(s.peak) for k, s in out.prediction.phases.items()}
    return out


def refusal(cells: list[CellPlan], gpu_mem: float, table: str) -> str | None:
    """The one line that refuses a launch on GPUs of ``gpu_mem`` GiB, or None when every cell fits."""
    bad = [c for c in cells if c.error or c.peak > gpu_mem * GiB]
    if not bad:
        return None
    c = bad[0]
    why = c.error or (f"needs {gib(c.peak)} GiB per GPU with the margin (fits: "
                      f"{fits(int(c.prediction.peak)) if c.prediction else 'none'} GiB)")
    more = f" (and {len(bad) - 1} more cells)" if len(bad) > 1 else ""
    return (f"table '{table}': cell {c.cell} {why}, more than --gpu-mem {gpu_mem:g} GiB{more}: see python "
            f"scripts/reproduce.py {table} --plan")

