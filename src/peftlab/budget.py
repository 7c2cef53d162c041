"""Parameter budget of any model × method, offline: the count a training run records, without weights.

Usage (Hydra overrides, as for ``train.py``; the task decides the head, so pass the task you will train; a model
config's ``default_task`` is used when no ``task=`` is given: the LLaMA models count with their LM task)::

    python -m peftlab.budget model=llama_7b method=lora method.r=32 "method.targets=[q,k,v,up,down]" task=commonsense
    python -m peftlab.budget model=roberta_base method=lora            # LoRA r=8 on q,v: ~0.3M (+ head)
    python -m peftlab.budget model=deberta_v3_base method=adapter_pfeiffer --solve method.bottleneck --target 1.18M
    python -m peftlab.budget model=llama_7b task=commonsense method=dora --solve method.r --target 0.84%
    python -m peftlab.budget model=roberta_base method=smt --solve method.<knob> --match method=lora method.r=8
    python -m peftlab.budget model=llama_7b method=smt                 # task=commonsense: 863 blocks of 256²
    python -m peftlab.budget model=llama_7b task=commonsense method=smt --memory batch=16 seq=256 \
        precision=bf16-mixed grad_checkpointing=true      # predicted training memory (peftlab.memory)

The backbone is built on the meta device (no memory, no download) from the architecture dimensions kept
under ``config:`` in ``conf/model/<name>.yaml`` (or, without them, from a local/cached ``config.json``);
then the method is applied exactly as :func:`peftlab.train.build` applies it, and the same
:func:`~peftlab.methods.base.count_parameters` counts it. A method whose trainable set is only known
after training starts (SMT's warm-up) may define ``planned_trainable(model, spec)``, called on the
unmodified backbone; its value then replaces the count after ``apply``.

Two denominators are printed: the total of the model as trained (what the run record's
``params.total`` holds, adapters included) and the base model's total (the papers' denominator, e.g.
LoRA r=32 on LLaMA-7B q,k,v,up,down = 56.1M / 6.74B = 0.83%).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from peftlab.architecture import compose, meta_backbone, with_default_task
from peftlab.config_utils import require
from peftlab.errors import PeftlabError
from peftlab.logs import quiet_known_warnings
from peftlab.memory import report
from peftlab.methods import build_method
from peftlab.methods.base import count_parameters, head_module_names, head_parameter_count
from peftlab.train import validate_config


@dataclass
class Budget:
    """Parameter counts of one model × method × task configuration."""

    trainable: int  # what the run record's params.trainable holds
    total: int  # what the run record's params.total holds (the model as trained)
    base_total: int  # the backbone alone (the papers' denominator)
    head: str  # the task head the backbone was built with
    head_modules: list[str] = field(default_factory=list)  # the head modules counted as trainable (train_head)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific counts (Method.extra_counts)
    head_params: int = 0  # the trained head's share of `trainable`

    @property
    def method_only(self) -> int:
        """The method's own count, the trained head excluded: the papers' "#Params"."""
        return self.trainable - self.head_params

    @property
    def pct_of_total(self) -> float:
        return 100.0 * self.trainable / self.total

    @property
    def pct_of_base(self) -> float:
        return 100.0 * self.trainable / self.base_total


def count(cfg: DictConfig, base: nn.Module | None = None) -> Budget:
    """Counts for ``cfg`` (a composed project config); ``base`` reuses an already built meta backbone."""
    spec, method, task = validate_config(cfg)
    if base is None:
        base = meta_backbone(spec, task.head, task.num_labels)
    base_total = count_parameters(base)[1]
    planned = getattr(method, "planned_trainable", None)
    planned_count = int(planned(base, spec)) if callable(planned) else None
    applied = build_method(cfg.method)
    with torch.device("meta"):
        model = applied.apply(copy.deepcopy(base), spec)
    trainable, total = count_parameters(model)
    heads = head_module_names(base, spec) if method.config.train_head else []
    return Budget(planned_count if planned_count is not None else trainable, total, base_total, task.head, heads,
                  applied.extra_counts(model), head_parameter_count(base, spec) if heads else 0)


def parse_count(text: str, base_total: int) -> float:
    """``56.1M``, ``1.2e6``, ``300k``, ``1,200,000`` → a count; ``0.83%`` → that share of ``base_total``."""
    t = text.strip().replace(",", "").replace("_", "")
    m = re.fullmatch(r"([0-9.eE+-]+)\s*([kKmMbBgG%]?)", t)
    require(m is not None, f"cannot read a parameter count from '{text}' (try 56.1M, 300k, 1.2e6 or 0.83%)")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        return value / 100.0 * base_total
    return value * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[unit]


def solve(overrides: list[str], key: str, target: float, max_value: int = 1 << 20) -> list[tuple[int, Budget]]:
    """The integer settings of ``key`` whose trainable count brackets ``target`` (assumed non-decreasing in it).

    Returns one or two ``(value, budget)`` pairs: the largest value under the target and the smallest at or
    above it, closest first.
    """
    require(key.startswith("method."), f"--solve takes a method option such as method.r, got '{key}'")
    cfg = compose(overrides)
    spec, _, task = validate_config(cfg)
    base = meta_backbone(spec, task.head, task.num_labels)
    cache: dict[int, Budget] = {}

    def at(value: int) -> Budget:
        if value not in cache:
            cache[value] = count(compose([*overrides, f"{key}={value}"]), base)
        return cache[value]

    lo, hi = 1, 1
    while at(hi).trainable < target:  # exponential search for an upper bracket
        lo, hi = hi, hi * 2
        require(hi <= max_value, f"no {key} <= {max_value} reaches {target:,.0f} trainable parameters")
    while hi - lo > 1:  # invariant: at(lo) < target <= at(hi), unless lo == hi == 1
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid).trainable < target else (lo, mid)
    found = [(v, at(v)) for v in sorted({lo, hi})]
    return sorted(found, key=lambda vb: abs(vb[1].trainable - target))


def describe(cfg: DictConfig, b: Budget) -> str:
    heads = ", ".join(b.head_modules) or "none"
    return (f"model={cfg.model.name} method={cfg.method.name} task={cfg.task.name} (head {b.head}; trained head "
            f"modules: {heads}): "
            f"trainable {b.trainable:,} / total {b.total:,} ({b.pct_of_total:.4f}%); "
            f"of the base model's {b.base_total:,}: {b.pct_of_base:.4f}%"
            + (f"; the method alone (head excluded, the papers' #Params): {b.method_only:,} "
               f"({100.0 * b.method_only / b.base_total:.4f}% of the base model)" if b.head_params else "")
            + "".join(f"; {k} {v:,}" for k, v in b.extra.items() if isinstance(v, int) and k != "mask_seed"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.budget", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=llama_7b method=lora method.r=32")
    parser.add_argument("--solve", metavar="KEY", help="integer method option to solve for, e.g. method.r")
    parser.add_argument("--target", help="target trainable count: 56.1M, 300k, 1.2e6, or 0.83%% of the base model")
    parser.add_argument("--match", nargs="+", metavar="OVERRIDE",
                        help="target = the trainable count of these overrides on the same model and task")
    parser.add_argument("--memory", action="store_true", help="predicted training memory (docs/memory.md); "
                        "settings batch= seq= precision= grad_checkpointing= ... among the overrides")
    args = parser.parse_intermixed_args(argv)
    quiet_known_warnings()  # the run's filter of known third-party messages: the answer alone is printed
    try:
        if args.memory:
            require(args.solve is None, "--memory and --solve are separate modes: run them one at a time")
            print(report(args.overrides))
            return 0
        args.overrides = with_default_task(args.overrides)
        cfg = compose(args.overrides)
        if not args.solve:
            require(args.target is None and args.match is None, "--target/--match need --solve KEY")
            print(describe(cfg, count(cfg)))
            return 0
        require((args.target is None) != (args.match is None), "--solve needs exactly one of --target and --match")
        if args.match is not None:
            ref_cfg = compose([*args.overrides, *args.match])
            ref = count(ref_cfg)
            print("target: " + describe(ref_cfg, ref))
            target = float(ref.trainable)
        else:
            spec, _, task = validate_config(cfg)
            target = parse_count(args.target, count_parameters(meta_backbone(spec, task.head, task.num_labels))[1])
        print(f"solving {args.solve} for {target:,.0f} trainable parameters")
        for value, b in solve(args.overrides, args.solve, target):
            print(f"  {args.solve}={value}: {describe(compose([*args.overrides, f'{args.solve}={value}']), b)} "
                  f"[{100.0 * (b.trainable - target) / target:+.2f}% vs target]")
        return 0
    except PeftlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
