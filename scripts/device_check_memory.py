"""The memory model (:mod:`peftlab.memory`) against measurement: on a GPU ``torch.cuda.max_memory_allocated``, on
the CPU the tensor bytes ``scripts/bench_methods.py`` counts.

Usage:
    python scripts/device_check_memory.py                    # on one CUDA GPU (scripts/device_check.sh), ~5 min
    python scripts/device_check_memory.py --dry-run          # the same on the CPU, tiny shape, temporary dir
    python scripts/device_check_memory.py --dry-run --bench-shape --out results/bench   # memory_check_cpu.md

On a GPU:
1. LoRA r=8 (q,v), SMT (q,k,v) at LoRA's budget and full FT on a random LLaMA-1B-shaped model in bf16
   (TinyLlama-1.1B's shape: 22 layers, hidden 2048, intermediate 5632, 32 heads, 4 KV heads, vocab 32000),
   batch 4 × 512, ``bf16-mixed`` under the precision rule, with and without gradient checkpointing: predicted
   peak / measured ``torch.cuda.max_memory_allocated`` over the row's steps (the issue's target: within 10%);
2. ``scripts/bench_methods.py --device cuda`` on the same shape (every method), which writes
   ``<out>/bench_methods_gpu.md`` with the prediction beside each measurement.
On the CPU (``--dry-run``): every method of the benchmark in ``32-true`` and ``bf16-mixed`` (checkpointed saved
tensors cannot be counted on the CPU), predicted / measured tensor bytes.

Writes ``<out>/memory_check_<gpu|cpu>.json`` and ``.md``; exit status 1 when a ratio is outside [0.9, 1.1].
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_methods  # noqa: E402  (the benchmark: rows, measurement, prediction)

from peftlab import results  # noqa: E402

LLAMA_1B = ["--layers", "22", "--hidden", "2048", "--intermediate", "5632", "--heads", "32", "--kv-heads", "4",
            "--vocab", "32000", "--batch", "4", "--seq", "512", "--steps", "3"]
TINY = ["--layers", "3", "--hidden", "128", "--heads", "4", "--kv-heads", "2", "--vocab", "500", "--batch", "2",
        "--seq", "32", "--steps", "1"]
TOLERANCE = 0.10


def check(shape: list[str], device: str, precision: str, checkpointing: bool, only: list[str] | None
          ) -> list[dict[str, Any]]:
    """Predicted / measured for the benchmark rows (``only`` these methods, + full FT and LoRA)."""
    flags = [*shape, "--device", device, "--precision", precision, *(["--grad-checkpointing"] if checkpointing else [])]
    rows = []
    for r in bench_methods.run(bench_methods.parse_args([*flags, *(["--only", *only] if only else [])])):
        if device == "cuda":
            measured, predicted = r["cuda_max_allocated_bytes"], r["predicted"]["peak_bytes"]
        else:
            measured, predicted = r["memory_total_bytes"], r["predicted"]["tensor_bytes"]
        rows.append({"label": r["label"], "precision": precision, "grad_checkpointing": checkpointing,
                     "measured_bytes": measured, "predicted_bytes": predicted, "ratio": predicted / measured})
        print(f"{r['label']:45s} {precision} checkpointing {checkpointing!s:5s}: predicted "
              f"{predicted / 2**20:.1f} MiB / measured {measured / 2**20:.1f} MiB = {predicted / measured:.4f}",
              flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU: every method, tensor bytes (no CUDA peak)")
    parser.add_argument("--bench-shape", action="store_true", help="dry run at bench_methods' default shape")
    parser.add_argument("--out", help="results directory (default results/bench; a temporary one for --dry-run)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; run with --dry-run on a CPU", file=sys.stderr)
        return 2
    out = Path(args.out or (tempfile.mkdtemp() if args.dry_run else bench_methods.ROOT / "results/bench"))
    if args.dry_run:
        shape, device = [] if args.bench_shape else TINY, "cpu"
        runs = [(precision, False, None) for precision in ("32-true", "bf16-mixed")]
    else:
        shape, device = LLAMA_1B, "cuda"
        runs = [("bf16-mixed", checkpointing, ["smt"]) for checkpointing in (False, True)]
    rows = [row for run in runs for row in check(shape, device, *run)
            if device == "cpu" or (row["label"].startswith(("full", "LoRA", "SMT (q,k,v), LoRA")))]
    worst = max(rows, key=lambda r: abs(r["ratio"] - 1))
    summary = (f"{sum(abs(r['ratio'] - 1) <= TOLERANCE for r in rows)}/{len(rows)} predictions within "
               f"{TOLERANCE:.0%}; largest error {worst['ratio'] - 1:+.2%} ({worst['label']}, {worst['precision']})")
    print(summary)
    record = {"created": results.now(), "git": results.git_commit(), "hardware": results.hardware(),
              "versions": results.versions(), "shape": shape or "bench_methods defaults", "rows": rows}
    stem = f"memory_check_{'gpu' if device == 'cuda' else 'cpu'}"
    out.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(out / f"{stem}.json", record)
    measured = "torch.cuda.max_memory_allocated" if device == "cuda" else "tensor bytes counted by bench_methods"
    lines = ["| row | precision | checkpointing | measured MiB | predicted MiB | predicted / measured |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['precision']} | {'on' if r['grad_checkpointing'] else 'off'} | "
              f"{r['measured_bytes'] / 2**20:.2f} | {r['predicted_bytes'] / 2**20:.2f} | {r['ratio']:.4f} |"
              for r in rows]
    (out / f"{stem}.md").write_text(
        f"# Memory model vs measurement ({device})\n\nProduced by `python scripts/device_check_memory.py"
        f"{' --dry-run' if args.dry_run else ''}{' --bench-shape' if args.bench_shape else ''}` on "
        f"{record['hardware'].get('gpu', record['hardware']['processor'])} ({record['created']}, commit "
        f"{record['git']['commit']}); model shape `{' '.join(shape) or 'bench_methods defaults'}`. Measured = "
        f"{measured}; predicted = `peftlab.memory` for the same row (fake tensors, no shared counting code).\n\n"
        f"{summary}.\n\n" + "\n".join(lines) + "\n")
    if device == "cuda":  # part 2: every method on the GPU, written to bench_methods_gpu.md
        bench_methods.main([*shape, "--device", device, "--precision", "bf16-mixed", "--out", str(out)])
    return 0 if abs(worst["ratio"] - 1) <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
