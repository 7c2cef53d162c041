"""Memory and step time of PEFT methods on one random LLaMA, one batch, one process; beside each measurement,
the memory model's prediction (:mod:`peftlab.memory`) for the same setting.

Usage:
    python scripts/bench_methods.py                       # 8 layers, hidden 512, batch 4×128, CPU, fp32
    python scripts/bench_methods.py --layers 2 --hidden 128 --steps 3 --out /tmp/bench   # quick check
    python scripts/bench_methods.py --precision bf16-mixed   # frozen weights bf16, trained fp32, autocast
    python scripts/bench_methods.py --device cuda --precision bf16-mixed --grad-checkpointing   # on a GPU

Every row of ``SETTINGS`` is a method config (``conf/method/<name>.yaml`` + overrides); add rows for new
methods. ``"{lora_params}"`` in an override is replaced by the LoRA row's trainable count, so SMT runs at
a matched budget. Memory is counted in tensor bytes (design.md "Benchmarks"): parameters, buffers,
gradients, optimizer state, method state (tensors the method object holds: SMT's fp32 gradient sums, SpIEL's
candidates...) and activations saved for backward (through ``torch.autograd.graph.saved_tensors_hooks``,
storages deduplicated, parameters and buffers excluded). The prediction is computed independently of these
counts (fake tensors, see :mod:`peftlab.memory`); it only reuses the run's structure (SMT's selected blocks,
SPT's plan: ``Method.method_state()``). On CUDA, ``torch.cuda.max_memory_allocated`` is compared with the
predicted peak. Step time is the median of ``--steps`` steps after two untimed ones. Writes
``<out>/bench_methods_<cpu|gpu>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from peftlab import results
from peftlab.config_utils import build_dataclass
from peftlab.memory import MemorySetting, predict
from peftlab.methods import build_method
from peftlab.methods.base import Method, count_parameters
from peftlab.models import ModelSpec, load_backbone
from peftlab.precision import PrecisionRule

ROOT = Path(__file__).resolve().parents[1]

# label, method name, overrides, phase ("train": the method's steady state; "warmup": SMT's warm-up step)
SETTINGS: list[dict[str, Any]] = [
    {"label": "full FT", "method": "full", "overrides": {}},
    {"label": "LoRA r=8 (q,v)", "method": "lora", "overrides": {"r": 8, "targets": ["q", "v"]}},
    {"label": "CapaBoost-LoRA r=8 (q,v), d=2, density 0.5", "method": "capaboost_lora",
     "overrides": {"r": 8, "targets": ["q", "v"], "d": 2, "density": 0.5, "mask_seed": 0}},
    {"label": "SMT (q,k,v), LoRA budget", "method": "smt",
     "overrides": {"block_size": 64, "budget_unit": "params", "budget": "{lora_params}", "warmup_steps": 2,
                   "warmup_mode": "grad_only", "selection_seed": 0}},
    {"label": "SMT (q,k,v) random blocks, LoRA budget", "method": "smt",
     "overrides": {"block_size": 64, "budget_unit": "params", "budget": "{lora_params}", "warmup_steps": 2,
                   "warmup_mode": "grad_only", "selection": "random", "selection_seed": 0}},
    {"label": "SMT warm-up step (full)", "method": "smt", "phase": "warmup",
     "overrides": {"block_size": 64, "budget_unit": "params", "budget": "{lora_params}", "warmup_mode": "full",
                   "selection_seed": 0}},
    {"label": "SMT warm-up step (grad_only)", "method": "smt", "phase": "warmup",
     "overrides": {"block_size": 64, "budget_unit": "params", "budget": "{lora_params}",
                   "warmup_mode": "grad_only", "selection_seed": 0}},
    {"label": "SHiRA r=8 (q,v), LoRA budget", "method": "shira",
     "overrides": {"r": 8, "targets": ["q", "v"], "mask_seed": 0}},
    {"label": "Super-Tuning (q,v), sparsity 0.99", "method": "supertuning",
     "overrides": {"targets": ["q", "v"], "sparsity": 0.99}},
    {"label": "LISA gamma=2, K=20", "method": "lisa",
     "overrides": {"activated_layers": 2, "interval_steps": 20, "sample_seed": 0}},
    # 256 down-proj channels × 512 = LoRA r=8 (q,v)'s 131,072 at the default 8×512 shape (intermediate 1408)
    {"label": "S2FT d_ratio=0.02273 (down channels), LoRA budget", "method": "s2ft",
     "overrides": {"v_ratio": 0.0, "o_ratio": 0.0, "u_ratio": 0.0, "d_ratio": 0.02273, "seed": 0}},
    {"label": "SpIEL (all linears), LoRA budget", "method": "spiel",
     "overrides": {"num_tunable_weights": "{lora_params}", "targets": ["q", "k", "v", "o", "gate", "up", "down"],
                   "seed": 0}},
    {"label": "SSF (all Linears + norms)", "method": "ssf", "overrides": {}},
    {"label": "SPT-LoRA, LoRA budget", "method": "spt_lora",
     "overrides": {"budget": "{lora_params}", "sensitivity_batches": 2, "init_seed": 0}},
]


def model_spec(args: argparse.Namespace) -> ModelSpec:
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/tiny_llama.yaml"))
    node["name"] = f"llama_L{args.layers}_H{args.hidden}"
    intermediate = args.intermediate or args.hidden * 11 // 4 // 64 * 64  # LLaMA's ≈ 8/3·hidden, a multiple of 64
    node["config"].update(hidden_size=args.hidden, intermediate_size=intermediate,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          num_key_value_heads=args.kv_heads or args.heads, vocab_size=args.vocab)
    node["dtype"] = "bfloat16" if args.precision == "bf16-mixed" else "float32"  # frozen weights' load dtype
    node["gradient_checkpointing"] = args.grad_checkpointing
    return build_dataclass(ModelSpec, node, "bench model", "model")


def method_node(setting: dict[str, Any], fill: dict[str, Any]) -> dict[str, Any]:
    node = OmegaConf.to_container(OmegaConf.load(ROOT / f"conf/method/{setting['method']}.yaml"))
    for key, value in setting["overrides"].items():
        node[key] = fill[value[1:-1]] if isinstance(value, str) and value.startswith("{") else value
    return node


def make_method(setting: dict[str, Any], fill: dict[str, Any]) -> Method:
    return build_method(method_node(setting, fill))


def precision_rule(model: torch.nn.Module, method: Method) -> None:
    """The run's precision rule (:mod:`peftlab.precision`): the method's trained tensors fp32, the others in their
    load dtype (bf16 under ``--precision bf16-mixed``)."""
    PrecisionRule().apply(model, method.trained_parameters(model))


def held_tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors reachable from ``obj``'s attributes through dicts, lists, tuples and peftlab objects (modules not
    entered): what a method object holds outside the model (SMT's gradient sums, SpIEL's candidates...)."""
    found: list[torch.Tensor] = []
    stack: list[Any] = list(vars(obj).values())
    seen: set[int] = {id(obj)}
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif type(item).__module__.startswith("peftlab.") and not isinstance(item, nn.Module):
            stack.extend(getattr(item, "__dict__", {}).values())  # e.g. SMT's GradientSums
    return found


def dense_parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The strided tensors holding ``t``'s memory (a sparse COO tensor, e.g. SHiRA's, has no storage of its own)."""
    if t.layout == torch.sparse_coo:
        return [t._indices(), t._values()]
    return [t]


def storage_ptr(t: torch.Tensor) -> int:
    return dense_parts(t)[-1].untyped_storage().data_ptr()


def tensor_bytes(tensors: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        for part in dense_parts(t):
            if part.untyped_storage().data_ptr() not in seen:
                seen.add(part.untyped_storage().data_ptr())
                total += part.untyped_storage().nbytes()
    return total


def measure(model: torch.nn.Module, method: Method, batch: dict[str, torch.Tensor], steps: int, lr: float,
            args: argparse.Namespace) -> dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model_ptrs = {storage_ptr(p) for p in model.parameters()} | {storage_ptr(b) for b in model.buffers()}
    times: list[float] = []
    mem: dict[str, int] = {}
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saved: list[torch.Tensor] = []
    for i in range(steps + 2):
        saved.clear()

        def pack(t: torch.Tensor) -> torch.Tensor:
            if storage_ptr(t) not in model_ptrs:
                saved.append(t)
            return t

        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
            loss = model(**batch).loss
        activations = tensor_bytes(saved)
        saved.clear()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_bytes = tensor_bytes(grads)
        opt.step()
        optimizer = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        counted = model_ptrs | {storage_ptr(t) for t in grads + optimizer}
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
        mem = {"params": tensor_bytes(model.parameters()), "buffers": tensor_bytes(model.buffers()),
               "grads": grad_bytes, "optimizer": tensor_bytes(optimizer),
               # on the device only: SMT's warm-up sums live in CPU memory on a GPU
               "method_state": tensor_bytes(t for t in held_tensors(method)
                                            if storage_ptr(t) not in counted and t.device.type == args.device),
               "activations": activations}
    out: dict[str, Any] = {"memory_bytes": mem, "memory_total_bytes": sum(mem.values()),
                           "step_time_s": statistics.median(times), "step_times_s": times}
    if args.grad_checkpointing:  # checkpointed blocks save through their own hooks: the count above misses them
        out["memory_bytes"]["activations"] = None
        out["memory_total_bytes"] = None
    if cuda:
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def predicted(setting: dict[str, Any], spec: ModelSpec, fill: dict[str, Any], method: Method,
              args: argparse.Namespace) -> dict[str, Any]:
    """The memory model's split for this row (phase "warmup" for the warm-up rows), from the config and the run's
    structure only."""
    phase = "warmup" if setting.get("phase") == "warmup" else "train"
    mem = MemorySetting(batch=args.batch, seq=args.seq, precision=args.precision,
                        grad_checkpointing=args.grad_checkpointing, device=args.device)
    pred = predict(spec, method_node(setting, fill), "causal_lm", None, mem, lambda m, b: m(**b).loss,
                   make_batch=lambda m: {"input_ids": torch.zeros(args.batch, args.seq, dtype=torch.long),
                                         "labels": torch.zeros(args.batch, args.seq, dtype=torch.long)},
                   state=method.method_state() if phase == "train" else None)
    split = pred.phases[phase]
    return {"split_bytes": split.by_kind(),
            "tensor_bytes": split.tensor_bytes(), "peak_bytes": split.peak, "moments_bytes": split.moments}


def run_setting(setting: dict[str, Any], spec: ModelSpec, batch: dict[str, torch.Tensor], fill: dict[str, Any],
                args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = load_backbone(spec, "causal_lm", None).to(args.device)
    method = make_method(setting, fill)
    model = method.apply(model, spec)
    method.on_fit_start(model, args.steps + 2)
    if setting.get("phase", "train") == "train":  # SMT's warm-up / SPT's sensitivity pass, then the switch
        model = method.gradient_phase(model, itertools.repeat(batch))
    precision_rule(model, method)
    trainable, total = count_parameters(model)
    row = {"label": setting["label"], "method": setting["method"], "phase": setting.get("phase", "train"),
           "overrides": {k: fill.get(str(v)[1:-1], v) for k, v in setting["overrides"].items()},
           "trainable_params": trainable, "total_params": total,
           **measure(model, method, batch, args.steps, method.current_lr(), args)}
    if setting["method"] == "smt" and row["phase"] == "train":
        row["smt_counts"] = method.method_state()["counts"]["per_type"]
    if args.predict:
        row["predicted"] = predicted(setting, spec, fill, method, args)
    return row


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Measured memory by kind, the prediction beside it, ratios to full FT and LoRA, step time."""
    full = next(r for r in rows if r["method"] == "full")
    lora = next(r for r in rows if r["method"] == "lora")
    cuda = "cuda_max_allocated_bytes" in lora
    total = "cuda_max_allocated_bytes" if cuda else "memory_total_bytes"
    head = ["setting", "trainable", "params", "buffers", "grads", "optim", "method", "activ.", "total MiB"]
    head += ["predicted MiB", "pred / meas."] if "predicted" in lora else []
    head += ["cuda max alloc. MiB", "predicted peak MiB", "pred / meas."] if cuda else []
    head += ["× full", "× LoRA", "step s", "step × LoRA"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m, pred = r["memory_bytes"], r.get("predicted")
        cells = [r["label"], f"{r['trainable_params']:,}",
                 *(_mib(m[k]) for k in ("params", "buffers", "grads", "optimizer", "method_state", "activations")),
                 _mib(r["memory_total_bytes"])]
        if pred is not None:
            cells += [_mib(pred["tensor_bytes"]), "n/a" if r["memory_total_bytes"] is None
                      else f"{pred['tensor_bytes'] / r['memory_total_bytes']:.3f}"]
        if cuda:
            cells += [_mib(r["cuda_max_allocated_bytes"]), _mib(pred["peak_bytes"]),
                      f"{pred['peak_bytes'] / r['cuda_max_allocated_bytes']:.3f}"]
        cells += ["n/a" if r[total] is None else f"{r[total] / full[total]:.3f}",
                  "n/a" if r[total] is None else f"{r[total] / lora[total]:.3f}",
                  f"{r['step_time_s']:.3f}", f"{r['step_time_s'] / lora['step_time_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags for a committed record: without ``--out``, a path of the machine the run was made on."""
    return {k: v for k, v in vars(args).items() if k != "out"}


def command_line(args: argparse.Namespace, skip: tuple[str, ...]) -> str:
    """The flags of ``args`` as they would be typed (lists spaced, switches bare, unset ones left out)."""
    flags = []
    for key, value in vars(args).items():
        if key in skip or value is None or value is False:
            continue
        text = " ".join(map(str, value)) if isinstance(value, list) else "" if value is True else str(value)
        flags.append(f"--{key.replace('_', '-')} {text}".rstrip())
    return " ".join(flags)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("layers", 8), ("hidden", 512), ("heads", 8), ("vocab", 8000), ("batch", 4), ("seq", 128),
                          ("steps", 5)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (grouped-query attention)")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute blocks in backward (saved activations are then not counted; CUDA peak is)")
    parser.add_argument("--no-predict", dest="predict", action="store_false", help="skip the memory model")
    parser.add_argument("--only", nargs="+", metavar="METHOD", help="only the rows of these methods (+ full, lora)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "results/bench"))
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of ``SETTINGS`` (or of ``--only``, with full FT and LoRA, the ratios' references)."""
    spec = model_spec(args)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=gen).to(args.device)
    batch = {"input_ids": ids, "labels": ids}
    rows: list[dict[str, Any]] = []
    fill: dict[str, Any] = {}
    keep = None if args.only is None else {"full", "lora", *args.only}
    for setting in SETTINGS:
        if keep is not None and setting["method"] not in keep:
            continue
        row = run_setting(setting, spec, batch, fill, args)
        if setting["method"] == "lora":
            fill["lora_params"] = row["trainable_params"]
        rows.append(row)
        pred = row.get("predicted", {})
        print(f"{row['label']}: trainable {row['trainable_params']:,}, measured {_mib(row['memory_total_bytes'])} MiB"
              f", predicted {_mib(pred.get('tensor_bytes'))} MiB (peak {_mib(pred.get('peak_bytes'))}), "
              f"cuda max {_mib(row.get('cuda_max_allocated_bytes'))}, step {row['step_time_s']:.3f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = run(args)
    md = table(rows)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"created": results.now(), "git": results.git_commit(), "hardware": results.hardware(),
              "versions": results.versions(), "args": record_args(args), "model": model_spec(args).config,
              "rows": rows}
    stem = f"bench_methods_{'gpu' if args.device == 'cuda' else args.device}"
    command = command_line(args, skip=("out", "predict"))
    results.write_json_atomic(out / f"{stem}.json", record)
    (out / f"{stem}.md").write_text(
        f"# Method benchmark ({args.device}, {model_spec(args).name}, batch {args.batch}×{args.seq}, {args.precision}"
        f"{', gradient checkpointing' if args.grad_checkpointing else ''})\n\n"
        f"Produced by `python scripts/bench_methods.py {command}`"
        f" on {record['hardware']['processor']} ({record['created']}, commit {record['git']['commit']}).\n"
        "Memory = tensor bytes: params + buffers + grads + optimizer state + method state + saved activations; "
        "predicted = the memory model (`peftlab.memory`, fake tensors) for the same setting"
        + ("; on CUDA the ratios use `torch.cuda.max_memory_allocated` and the predicted peak" if args.device == "cuda"
           else "") + f".\n\n{md}\n")


if __name__ == "__main__":
    main()
