"""Step time of SMT against LoRA, interleaved in one process so that a shared, noisy machine hurts both alike.

Usage:
    python scripts/bench_smt_layer.py                        # bench_methods' model (8 layers × 512), batch 4×128
    python scripts/bench_smt_layer.py --threads 2 --clock wall --pairs 30
    python scripts/bench_smt_layer.py --layers 2 --hidden 128 --pairs 3 --layer-reps 5 --out /tmp/b   # quick check
    python scripts/bench_smt_layer.py --paper-layer      # LLaMA-7B's q/k/v layer at the commonsense batch (below)

Two measurements, each alternating the variants (A, B, C, A, B, C, …) and reporting medians, quartiles and
the median of the per-round ratios:
- ``layer``: one ``hidden × hidden`` linear at the benchmark's token count, forward + backward with an input
  gradient: frozen ``nn.Linear`` (the floor every method pays), peft LoRA r=8 and SMT with ``k`` blocks;
- ``step``: a full training step (forward, backward, AdamW) of the benchmark model with the LoRA and SMT
  rows of ``scripts/bench_methods.py`` (same selection), plus the frozen model with gradients flowing to
  the embeddings' output (the dense work both methods share).
``--clock cpu`` (default) times process CPU seconds with ``--threads 1``: another process on the same
cores adds wall time but not CPU time, so ratios stay stable on a busy machine. Writes
``<out>/bench_smt_layer_cpu.json`` and ``.md``.

``--paper-layer`` instead times the ``layer`` measurement at LLaMA-7B's real q/k/v shape (4096×4096, the
commonsense batch of 16 × 256 = 4,096 tokens, fp32 on the CPU) against LoRA r=32 (the SMT paper's baseline) and
the frozen layer, with SMT at the block counts the paper's budget gives a matrix (863 blocks of 256² over LLaMA-7B's
96 q/k/v matrices, from ``python -m peftlab.budget model=llama_7b method=smt``): spread evenly (≈ 9 per matrix), all
on V (≈ 27), and a whole matrix (256). Writes ``<out>/smt_layer_llama7b_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from torch import nn

from peftlab import results
from peftlab.budget import compose, count
from peftlab.methods.base import count_parameters
from peftlab.methods.smt.layer import BlockSparseLinear

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_methods  # noqa: E402  (the benchmark model and method rows, shared)


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, clock: Callable[[], float]
                ) -> dict[str, list[float]]:
    """Seconds per call of every variant, alternating the variants within each round (two untimed rounds)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds + 2):
        for name, fn in variants.items():
            start = clock()
            fn()
            if i >= 2:
                times[name].append(clock() - start)
    return times


def summary(times: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    """Median and quartiles per variant; ``ratio``: median of the per-round ratios to ``base`` and their quartiles."""
    out = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[base], strict=True)]
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        rq = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {"median_s": statistics.median(ts), "q1_s": q[0], "q3_s": q[2],
                     "ratio": statistics.median(ratios), "ratio_q1": rq[0], "ratio_q3": rq[2]}
    return out


def layer_variants(hidden: int, tokens: int, block_size: int, ks: list[int], rank: int = 8
                   ) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    base = nn.Linear(hidden, hidden, bias=False).requires_grad_(False)
    x0, g = torch.randn(tokens, hidden), torch.randn(tokens, hidden)
    lora = peft.get_peft_model(nn.Sequential(copy.deepcopy(base)),
                               peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["0"]))
    modules: dict[str, nn.Module] = {"frozen linear": base, f"LoRA r={rank}": lora}
    n_blocks = (hidden // block_size) ** 2
    for k in ks:
        smt = BlockSparseLinear(copy.deepcopy(base), torch.randperm(n_blocks)[:k].tolist(), block_size)
        smt.smt_delta.requires_grad_(True)
        modules[f"SMT {k} blocks"] = smt

    def call(module: nn.Module) -> Callable[[], None]:
        def fn() -> None:
            module(x0.clone().requires_grad_(True)).backward(g)
            module.zero_grad(set_to_none=True)
        return fn
    return {name: call(m) for name, m in modules.items()}


def step_variants(args: argparse.Namespace) -> tuple[dict[str, Callable[[], None]], dict[str, Any]]:
    shape = [f"--{k}={getattr(args, k)}" for k in ("layers", "hidden", "heads", "vocab", "batch", "seq")]
    spec = bench_methods.model_spec(bench_methods.parse_args(
        shape + ([f"--intermediate={args.intermediate}"] if args.intermediate else [])))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=gen)
    batch = {"input_ids": ids, "labels": ids}
    rows: dict[str, dict[str, Any]] = {}
    for setting in bench_methods.SETTINGS:  # the first steady-state row of each method: LoRA r=8, SMT top-k
        if setting.get("phase", "train") == "train":
            rows.setdefault(setting["method"], setting)
    fill: dict[str, Any] = {}
    info: dict[str, Any] = {}
    variants: dict[str, Callable[[], None]] = {}
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**spec.config)
    variants["frozen (input grads only)"] = frozen_step(transformers.AutoModelForCausalLM.from_config(config), batch)
    for name in ("lora", "smt"):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        method = bench_methods.make_method(rows[name], fill)
        model = method.apply(model, spec)
        if name == "smt":
            model = method.warmup(model, itertools.repeat(batch))
            info["smt_blocks_per_matrix"] = method.method_state()["counts"]["per_matrix"]
        info[f"{name}_trainable"] = count_parameters(model)[0]
        fill.setdefault("lora_params", info[f"{name}_trainable"])
        variants[rows[name]["label"]] = train_step(model, batch, method.current_lr())
    return variants, info


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], lr: float) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)

    def fn() -> None:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return fn


def frozen_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """Every parameter frozen; the embeddings' output requires grad, so backward runs the whole depth."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    return lambda: model(**batch).loss.backward()


def table(title: str, stats: dict[str, dict[str, float]], base: str) -> str:
    lines = [f"### {title}", "", f"| variant | median ms | quartiles ms | × {base} (median of per-round ratios) "
             "| ratio quartiles |", "|---|---|---|---|---|"]
    for name, s in stats.items():
        lines.append(f"| {name} | {s['median_s'] * 1e3:.2f} | {s['q1_s'] * 1e3:.2f}–{s['q3_s'] * 1e3:.2f} | "
                     f"{s['ratio']:.3f} | {s['ratio_q1']:.3f}–{s['ratio_q3']:.3f} |")
    return "\n".join(lines)


def paper_blocks() -> dict[str, int]:
    """SMT blocks per q/k/v matrix of LLaMA-7B at the paper's budget (0.84%): spread evenly, or all on V."""
    cfg = compose(["model=llama_7b", "task=commonsense", "method=smt"])
    block = cfg.method.block_size
    blocks = count(cfg).trainable // block**2  # 863
    layers = cfg.model.config.num_hidden_layers
    return {"spread over q, k, v": round(blocks / (3 * layers)), "all on V": round(blocks / layers),
            "whole matrix": (cfg.model.config.hidden_size // block) ** 2, "total": blocks, "block_size": block}


def paper_layer(args: argparse.Namespace, clock: Callable[[], float]) -> None:
    """The ``layer`` measurement at LLaMA-7B's q/k/v shape (see the module docstring)."""
    blocks = paper_blocks()
    ks = [blocks["spread over q, k, v"], blocks["all on V"], blocks["whole matrix"]]
    variants = layer_variants(args.paper_hidden, args.paper_tokens, blocks["block_size"], ks, args.paper_rank)
    base = f"LoRA r={args.paper_rank}"
    stats = summary(interleaved(variants, args.paper_reps, clock), base)
    md = table(f"one {args.paper_hidden}×{args.paper_hidden} linear (LLaMA-7B q/k/v), {args.paper_tokens} tokens, "
               "fwd+bwd", stats, base)
    print(md)
    record = {"created": results.now(), "git": results.git_commit(), "hardware": results.hardware(),
              "versions": results.versions(), "args": bench_methods.record_args(args),
              "load_average": list(os.getloadavg()),
              "paper_blocks": blocks, "layer": stats}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(out / "smt_layer_llama7b_cpu.json", record)
    flags = bench_methods.command_line(args, skip=("out", "layers", "hidden", "heads", "vocab", "batch", "seq",
                                                   "block_size", "pairs", "layer_reps", "ks", "intermediate"))
    (out / "smt_layer_llama7b_cpu.md").write_text(
        f"# SMT layer at LLaMA-7B's q/k/v shape vs LoRA r={args.paper_rank}, interleaved ({args.clock} clock, "
        f"{args.threads} thread(s))\n\nProduced by `python scripts/bench_smt_layer.py {flags}` on "
        f"{record['hardware']['processor']} ({record['created']}, commit {record['git']['commit']}, load average "
        f"{record['load_average']}). SMT at the paper's budget: {blocks['total']} blocks of {blocks['block_size']}² "
        f"over LLaMA-7B's q, k, v matrices → {ks[0]} per matrix spread evenly, {ks[1]} if all on V; {ks[2]} = the "
        f"whole matrix. fp32 on the CPU; forward + backward with the input gradient, as inside a network.\n\n{md}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("layers", 8), ("hidden", 512), ("heads", 8), ("vocab", 8000), ("batch", 4), ("seq", 128),
                          ("block-size", 64), ("pairs", 20), ("layer-reps", 60), ("threads", 1)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 19, 32], help="SMT blocks in the layer test")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--paper-layer", action="store_true", help="only the LLaMA-7B q/k/v layer run (docstring)")
    for flag, default in (("paper-hidden", 4096), ("paper-tokens", 16 * 256), ("paper-rank", 32), ("paper-reps", 6)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--out", default=str(bench_methods.ROOT / "results/bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.paper_layer:
        paper_layer(args, clock)
        return
    layer = summary(interleaved(layer_variants(args.hidden, args.batch * args.seq, args.block_size, args.ks),
                                args.layer_reps, clock), "LoRA r=8")
    variants, info = step_variants(args)
    lora_label = next(n for n in variants if n.startswith("LoRA"))
    step = summary(interleaved(variants, args.pairs, clock), lora_label)
    md = "\n\n".join([table(f"one {args.hidden}×{args.hidden} linear, {args.batch * args.seq} tokens, fwd+bwd",
                            layer, "LoRA r=8"), table("training step", step, "LoRA")])
    print(md)
    record = {"created": results.now(), "git": results.git_commit(), "hardware": results.hardware(),
              "versions": results.versions(), "args": bench_methods.record_args(args),
              "load_average": list(os.getloadavg()),
              "layer": layer, "step": step, **info}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(out / "bench_smt_layer_cpu.json", record)
    command = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                       for k, v in vars(args).items() if k != "out" and v is not None)
    (out / "bench_smt_layer_cpu.md").write_text(
        f"# SMT vs LoRA step time, interleaved ({args.clock} clock, {args.threads} thread(s))\n\n"
        f"Produced by `python scripts/bench_smt_layer.py {command}` on {record['hardware']['processor']} "
        f"({record['created']}, commit {record['git']['commit']}, load average {record['load_average']}).\n"
        f"SMT blocks per matrix: {info['smt_blocks_per_matrix']}.\n\n{md}\n")


if __name__ == "__main__":
    main()
