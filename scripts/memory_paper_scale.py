"""Predicted training memory at the papers' scale (no GPU needed): ``results/bench/memory_paper_scale.md``.

Usage:
    python scripts/memory_paper_scale.py                      # the three protocols below (a few minutes on a CPU)
    python scripts/memory_paper_scale.py --models llama_7b --out /tmp/mem

Every row is :func:`peftlab.memory.predict_config` (docs/memory.md) for one row of a paper table, with the
overrides ``scripts/reproduce.py`` runs for it (``peftlab.reproduce.plan``: the experiment file's entries and
cited settings) plus full fine-tuning, CapaBoost and SMT's ``grad_only`` warm-up on the same harness:

- LLaMA-7B and LLaMA3-8B at the commonsense protocol (``experiment=smt_commonsense``: batch 16, cutoff 256,
  bf16-mixed) with gradient checkpointing, as the official SMT code trains (HectorHHZ/Sparse_Matrix_Tuning
  ``deepspeed/fine_tune.py``: ``model.gradient_checkpointing_enable()``) and the DoRA scripts
  (``--use_gradient_checkpointing``); LLaMA-7B also with the sparse peers of ``experiment=sparse_peers``;
- DeBERTaV3-base at the GLUE protocol of the CapaBoost scripts (``experiment=capaboost_glue``, RTE: LoRA rows
  batch 32 × 512, adapter rows 64 × 256, fp16 autocast, no checkpointing).

Ratios are to full fine-tuning's and LoRA's peaks in the same table; "fits" lists the GPU sizes (GiB) whose
memory holds the predicted peak of allocated tensors with the margin of docs/memory.md
(:func:`peftlab.memory.report.with_margin`: cuBLAS workspaces, the allocator's reserve, the CUDA context).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab import results
from peftlab.budget import compose
from peftlab.errors import PeftlabError
from peftlab.memory import GiB, MemorySetting, Prediction, fits, memory_setting, predict_config, split_overrides
from peftlab.reproduce import plan

ROOT = Path(__file__).resolve().parents[1]
SMT_CLAIM = 0.33  # SMT paper (arXiv 2405.15525): 67% less GPU memory than full fine-tuning on LLaMA-7B


@dataclass
class Protocol:
    model: str
    title: str
    table: str  # the experiment file whose harness (task, batch, length, precision) the rows use
    task: str  # the table's task entry
    checkpointing: bool
    rows: dict[str, list[str]] = field(default_factory=dict)  # row label → overrides (after experiment=<table>)


WARMUP_ONLY = "SMT, grad_only warm-up"  # this row shows only its warm-up: its block phase is the smt row's
CAPABOOST_LLAMA = ["method=capaboost_lora", "method.d=2", "method.density=0.5"]  # on LoRA r32's row: same storage


def points(table: str, task: str, methods: list[str] | None = None) -> dict[str, list[str]]:
    """Row id → the overrides ``scripts/reproduce.py`` runs for that row of ``table`` at ``task`` (first seed)."""
    found: dict[str, list[str]] = {}
    for point in plan(table).points:
        if point.task == task and (methods is None or point.method in methods):
            found.setdefault(point.method, [o for o in point.overrides if not o.startswith("table.")])
    return found


def harness(overrides: list[str]) -> list[str]:
    """A row's overrides without its method settings: the task, batch and length it runs at."""
    return [o for o in overrides if not o.startswith("method")]


def protocols() -> list[Protocol]:
    paper = points("smt_commonsense", "commonsense")
    base = harness(paper["lora"])
    deepspeed = [*base, "method=full", "precision=bf16-master"]
    llama = {"full FT": [*base, "method=full"], "full FT, DeepSpeed bf16": deepspeed,
             "full FT, optim.offload": [*base, "method=full", "optim.offload=true"],
             **paper, WARMUP_ONLY: [*paper["smt"], "method.warmup_mode=grad_only", "optim.offload=false"],
             "capaboost_lora": [*paper["lora"], *CAPABOOST_LLAMA]}
    peers = points("sparse_peers", "commonsense", ["shira", "supertuning", "spiel", "spt_lora", "s2ft", "lisa", "ssf"])
    glue = points("capaboost_glue", "rte")
    smt = [*harness(glue["lora"]), "method=smt", "method.budget=0.0084"]
    deberta = {"full FT": [*harness(glue["lora"]), "method=full"], **glue, "smt": smt,
               WARMUP_ONLY: [*smt, "method.warmup_mode=grad_only"]}
    return [Protocol("llama_7b", "LLaMA-7B, commonsense protocol", "smt_commonsense", "commonsense", True,
                     {**llama, **peers}),
            Protocol("llama3_8b", "LLaMA3-8B, commonsense protocol", "smt_commonsense", "commonsense", True, llama),
            Protocol("deberta_v3_base", "DeBERTaV3-base, GLUE protocol (CapaBoost scripts, RTE)", "capaboost_glue",
                     "rte", False, deberta)]


def predict_row(p: Protocol, overrides: list[str]) -> tuple[MemorySetting, Prediction]:
    """The prediction for one row: the experiment's harness, the row's overrides, the protocol's model; precision
    from the experiment (``trainer.precision``) unless the row names one."""
    hydra, settings = split_overrides([f"experiment={p.table}", *overrides, f"model={p.model}"])
    cfg = compose(hydra)
    setting = memory_setting(cfg, {"precision": cfg.trainer.precision,
                                   "grad_checkpointing": str(p.checkpointing).lower(), **settings})
    return setting, predict_config(cfg, setting)


def section(p: Protocol, rows: list[dict[str, Any]]) -> str:
    full = next(r for r in rows if r["label"] == "full FT")["peak"]
    lora = next(r for r in rows if r["label"] == "lora")["peak"]
    lines = [f"## {p.title} (`experiment={p.table}`), gradient checkpointing {'on' if p.checkpointing else 'off'}",
             "", "GiB on one device by kind, for each phase of the row:", "",
             "| row | batch × seq | precision | trainable | phase | optimizer | frozen | trained | master | grads "
             "| AdamW | method (device) | activations | peak GiB | × full FT | × LoRA | fits (GiB) | CPU GiB |",
             "|" + "---|" * 18]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | | | | fails before training: {r['error']} |" + " |" * 13)
            continue
        for phase, s in r["phases"].items():
            if r["label"] == WARMUP_ONLY and phase == "block training":
                continue
            g = {k: f"{v / GiB:.2f}" for k, v in s.items() if k not in ("peak", "moments", "engine")}
            lines.append(f"| {r['label']} | {r['shape']} | {r['precision']} | {r['trainable']:,} | {phase} | "
                         f"{s['engine']} | "
                         f"{g['frozen_weights']} | "
                         f"{g['trained_params']} | {g['master_copies']} | {g['gradients']} | {g['optimizer_state']} | "
                         f"{g['method_state']} | {g['activations']} | **{s['peak'] / GiB:.2f}** | "
                         f"{s['peak'] / full:.3f} | {s['peak'] / lora:.3f} | {fits(s['peak'])} | {g['offloaded']} |")
    lines += [""] + [f"- `{r['label']}`: `{' '.join(r['overrides'])}`" + (f"; assumed: {'; '.join(r['notes'])}"
                                                                          if r["notes"] else "") for r in rows]
    return "\n".join(lines)


def verdicts(p: Protocol, rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets and the SMT paper's claim, at this protocol."""
    by = {r["label"]: r for r in rows}
    full, lora, smt = by["full FT"]["peak"], by["lora"]["peak"], by["smt"]["phases"]
    blocks = smt["block training"]["peak"]
    warm = by[WARMUP_ONLY]["phases"]["warm-up (grad_only)"]["peak"]
    ok = {True: "met", False: "NOT met"}
    return [f"- SMT block training: {blocks / GiB:.2f} GiB = **{blocks / full:.3f}× full FT** (target ≤ 0.40: "
            f"{ok[blocks <= 0.40 * full]}; the SMT paper's −67% is {SMT_CLAIM:.2f}×) and **{blocks / lora:.4f}× LoRA "
            f"r=32** (target ≤ 1.0: {ok[blocks <= lora]}); LoRA {lora / GiB:.2f} GiB, full FT {full / GiB:.2f} GiB.",
            f"- SMT warm-up in `grad_only` mode: {warm / GiB:.2f} GiB = **{warm / full:.3f}× full FT** (target ≤ 0.6: "
            f"{ok[warm <= 0.6 * full]}); the official warm-up (`full` = full fine-tuning, its optimizer in CPU memory "
            f"as the official code's ZeRO-Offload: `optim.offload=true`): "
            f"{smt['warm-up (full)']['peak'] / GiB:.2f} GiB = {smt['warm-up (full)']['peak'] / full:.3f}× full FT "
            "on the device, + "
            f"{smt['warm-up (full)']['offloaded'] / GiB:.2f} GiB in CPU memory (fp32 masters, gradients, Adam and "
            "the gradient sums)."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", help="only these protocols' models")
    parser.add_argument("--out", default=str(ROOT / "results/bench"))
    args = parser.parse_args()
    chosen = [p for p in protocols() if args.models is None or p.model in args.models]
    record: dict[str, Any] = {"created": results.now(), "git": results.git_commit(), "hardware": results.hardware(),
                              "versions": results.versions(), "protocols": {}}
    parts = []
    for p in chosen:
        rows = []
        for label, overrides in p.rows.items():
            try:
                setting, pred = predict_row(p, overrides)
            except PeftlabError as err:  # a table row that cannot run at this scale: say so in the table
                rows.append({"label": label, "overrides": overrides, "error": str(err), "notes": []})
                print(f"{p.model} {label}: {err}", flush=True)
                continue
            phases = {pred.labels[k]: {**s.by_kind(), "engine": s.engine, "peak": s.peak, "moments": s.moments}
                      for k, s in pred.phases.items()}
            rows.append({"label": label, "overrides": overrides, "trainable": pred.phases["train"].trainable,
                         "precision": setting.precision, "shape": f"{setting.batch} × {setting.seq}",
                         "inputs": pred.inputs, "notes": pred.notes,
                         "peak": pred.peak, "phases": phases})
            print(f"{p.model} {label}: peak {pred.peak / GiB:.2f} GiB", flush=True)
        record["protocols"][p.model] = rows
        extra = verdicts(p, rows) if p.model.startswith("llama") else []
        parts.append(section(p, rows) + ("\n\n" + "\n".join(extra) if extra else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(out / "memory_paper_scale.json", record)
    command = "python scripts/memory_paper_scale.py" + (f" --models {' '.join(args.models)}" if args.models else "")
    text = (f"# Training memory at paper scale (predicted, no GPU)\n\nProduced by `{command}` on "
            f"{record['hardware']['processor']} ({os.cpu_count()} CPUs; {record['created']}, commit "
            f"{record['git']['commit']}{', dirty' if record['git']['dirty'] else ''}). Every number is the memory "
            "model's prediction (`python -m peftlab.budget ... --memory`, docs/memory.md): tensor bytes on one "
            "device, by kind, for each phase; peak = the largest moment of a training step. Precision rule "
            "(`bf16-mixed`, `16-mixed`): frozen weights in the load dtype (LLaMA bf16, DeBERTa fp32), trained "
            "tensors fp32, AdamW fp32, no master copy. `fits` includes the margin of docs/memory.md (+64 MiB cuBLAS "
            "workspaces, +10% allocator reserve, +1 GiB CUDA context). `full FT, DeepSpeed bf16` = the official SMT "
            "code's layout (HectorHHZ/Sparse_Matrix_Tuning `deepspeed/fine_tune.py`, ZeRO `bf16`, one GPU): bf16 "
            "weights and gradients + fp32 master + fp32 Adam, all on the GPU (no offload). `optim.offload` "
            "(peftlab.offload, what the official full-FT config `peft/configs/fft_deepspeed_config.json`'s "
            "`offload_optimizer: cpu` does): the weights in their load dtype on the GPU with one gradient at a time, "
            "the fp32 masters, gradients and Adam in CPU memory (column CPU GiB); the `smt` rows' warm-up runs so "
            "(cited). SMT rows without a run's selection assume its blocks spread over all q, k, v matrices (the "
            "worst case for activations)."
            f"\n\n" + "\n\n".join(parts) + "\n")
    tmp = out / "memory_paper_scale.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "memory_paper_scale.md")
    print(text)


if __name__ == "__main__":
    main()
