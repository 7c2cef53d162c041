"""Memory and step time of PEFT methods on one random LLaMA, one batch, one process.

Usage:
    python scripts/bench_methods.py                       # 8 layers, hidden 512, batch 4×128, CPU
    python scripts/bench_methods.py --layers 2 --hidden 128 --steps 3 --out /tmp/bench   # quick check
    python scripts/bench_methods.py --device cuda         # on a GPU: also torch.cuda.max_memory_allocated

Every row of ``SETTINGS`` is a method config (``conf/method/<name>.yaml`` + overrides); add rows for new
methods. ``"{lora_params}"`` in an override is replaced by the LoRA row's trainable count, so SMT runs at
a matched budget. Memory is counted in tensor bytes (design.md "Benchmarks"): parameters, gradients,
optimizer state, method state (SMT's fp32 gradient sums) and activations saved for backward (through
``torch.autograd.graph.saved_tensors_hooks``, storages deduplicated, parameters excluded). Step time is
the median of ``--steps`` steps after two untimed ones. Writes ``<out>/bench_methods.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import OmegaConf

from peftlab import results
from peftlab.config_utils import build_dataclass
from peftlab.methods import build_method
from peftlab.methods.base import Method, count_parameters
from peftlab.models import ModelSpec

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
     "overrides": {"budget": "{lora_params}", "sensitivity_batches": 2}},
]


def model_spec(args: argparse.Namespace) -> ModelSpec:
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/tiny_llama.yaml"))
    node["name"] = f"llama_L{args.layers}_H{args.hidden}"
    intermediate = args.intermediate or args.hidden * 11 // 4 // 64 * 64  # LLaMA's ≈ 8/3·hidden, a multiple of 64
    node["config"].update(hidden_size=args.hidden, intermediate_size=intermediate,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          num_key_value_heads=args.heads, vocab_size=args.vocab)
    return build_dataclass(ModelSpec, node, "bench model", "model")


def make_method(setting: dict[str, Any], fill: dict[str, Any]) -> Method:
    node = OmegaConf.to_container(OmegaConf.load(ROOT / f"conf/method/{setting['method']}.yaml"))
    for key, value in setting["overrides"].items():
        node[key] = fill[value[1:-1]] if isinstance(value, str) and value.startswith("{") else value
    return build_method(node)


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
            device: str) -> dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    state_ptrs = {storage_ptr(p) for p in model.parameters()}
    state_ptrs |= {storage_ptr(b) for b in model.buffers()}
    times: list[float] = []
    mem: dict[str, int] = {}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    saved: list[torch.Tensor] = []
    for i in range(steps + 2):
        saved.clear()

        def pack(t: torch.Tensor) -> torch.Tensor:
            if storage_ptr(t) not in state_ptrs:
                saved.append(t)
            return t

        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**batch).loss
        activations = tensor_bytes(saved)
        saved.clear()
        loss.backward()
        grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
        mem = {"params": tensor_bytes(model.parameters()), "grads": grads,
               "optimizer": tensor_bytes(v for s in opt.state.values() for v in s.values()),
               "method_state": tensor_bytes(getattr(method, "grad_sums", {}).values()),
               "activations": activations}
    out: dict[str, Any] = {"memory_bytes": mem, "memory_total_bytes": sum(mem.values()),
                           "step_time_s": statistics.median(times), "step_times_s": times}
    if device == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def run_setting(setting: dict[str, Any], spec: ModelSpec, batch: dict[str, torch.Tensor], fill: dict[str, Any],
                args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**spec.config)
    model = transformers.AutoModelForCausalLM.from_config(config).to(args.device)
    method = make_method(setting, fill)
    model = method.apply(model, spec)
    if setting.get("phase", "train") == "train":  # SMT's warm-up / SPT's sensitivity pass, then the switch
        model = method.gradient_phase(model, itertools.repeat(batch))
    trainable, total = count_parameters(model)
    row = {"label": setting["label"], "method": setting["method"], "phase": setting.get("phase", "train"),
           "overrides": {k: fill.get(str(v)[1:-1], v) for k, v in setting["overrides"].items()},
           "trainable_params": trainable, "total_params": total,
           **measure(model, method, batch, args.steps, method.current_lr(), args.device)}
    if setting["method"] == "smt" and row["phase"] == "train":
        row["smt_counts"] = method.method_state()["counts"]["per_type"]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    full = next(r for r in rows if r["method"] == "full")
    lora = next(r for r in rows if r["method"] == "lora")
    lines = ["| setting | trainable | params MiB | grads MiB | optim MiB | method MiB | activ. MiB | total MiB | "
             "× full | × LoRA | step s | step × LoRA |", "|" + "---|" * 12]
    for r in rows:
        m = {k: v / 2**20 for k, v in r["memory_bytes"].items()}
        lines.append(f"| {r['label']} | {r['trainable_params']:,} | {m['params']:.1f} | {m['grads']:.1f} | "
                     f"{m['optimizer']:.1f} | {m['method_state']:.1f} | {m['activations']:.1f} | "
                     f"{r['memory_total_bytes'] / 2**20:.1f} | "
                     f"{r['memory_total_bytes'] / full['memory_total_bytes']:.3f} | "
                     f"{r['memory_total_bytes'] / lora['memory_total_bytes']:.3f} | {r['step_time_s']:.3f} | "
                     f"{r['step_time_s'] / lora['step_time_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "results/bench"))
    args = parser.parse_args()
    spec = model_spec(args)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=gen).to(args.device)
    batch = {"input_ids": ids, "labels": ids}
    rows: list[dict[str, Any]] = []
    fill: dict[str, Any] = {}
    for setting in SETTINGS:
        row = run_setting(setting, spec, batch, fill, args)
        if setting["method"] == "lora":
            fill["lora_params"] = row["trainable_params"]
        rows.append(row)
        print(f"{row['label']}: trainable {row['trainable_params']:,}, "
              f"memory {row['memory_total_bytes'] / 2**20:.1f} MiB, step {row['step_time_s']:.3f} s", flush=True)
    md = table(rows)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"created": results.now(), "git": results.git_commit(), "hardware": results.hardware(),
              "versions": results.versions(), "args": vars(args), "model": spec.config, "rows": rows}
    stem = f"bench_methods_{args.device}"
    command = " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None)
    results.write_json_atomic(out / f"{stem}.json", record)
    (out / f"{stem}.md").write_text(
        f"# Method benchmark ({args.device}, {spec.name}, batch {args.batch}×{args.seq})\n\n"
        f"Produced by `python scripts/bench_methods.py {command}`"
        f" on {record['hardware']['processor']} ({record['created']}, commit {record['git']['commit']}).\n"
        f"Memory = tensor bytes: params + grads + optimizer state + method state + saved activations.\n\n{md}\n")


if __name__ == "__main__":
    main()
