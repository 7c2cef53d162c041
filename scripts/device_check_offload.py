"""SMT's offloaded warm-up on one GPU (``optim.offload=true``, :mod:`peftlab.offload`), the switch, block training:
measured ``torch.cuda.max_memory_allocated`` per phase against the memory model's prediction (target: within 10%),
and the margin the model assumes (docs/memory.md) against the memory the device really lost.

Usage:
    python scripts/device_check_offload.py              # one CUDA GPU (called by scripts/device_check.sh), ~3 min
    python scripts/device_check_offload.py --dry-run    # the same run on the CPU, tiny shape: no memory check

The run: a random LLaMA-1B-shaped model (TinyLlama-1.1B's shape: 22 layers, hidden 2048, intermediate 5632, 32
heads, 4 KV heads, vocab 32000) loaded in bf16, ``trainer=gpu`` (bf16-mixed), gradient checkpointing, batches of
4 × 512 random tokens, SMT at the paper's ratio (0.84%, 256² blocks of q, k, v) with ``method.warmup_steps=2``,
4 optimizer steps: 2 of warm-up with the optimizer in CPU memory, the switch, 2 of block training with AdamW on
the GPU. The peak of each phase is read after ``torch.cuda.reset_peak_memory_stats`` at its start; the prediction
is ``peftlab.memory.predict`` for the same model, batch and setting, with the run's own block selection.

Expected output (the predictions, computed on a CPU with this code; the GPU's measurements must be within 10%):

    warm-up (full): predicted 2.85 GiB, measured ... GiB, ratio within [0.9, 1.1]
    block training: predicted 2.60 GiB, measured ... GiB, ratio within [0.9, 1.1]
    margin: reserved/allocated ..., memory outside PyTorch ... GiB (assumed: +10%, 2.00 GiB)
    optimizer engines: AdamW in CPU memory ... from step 0; AdamW on the device from step 2
    PASS

Exit status 1 when a ratio is outside [0.9, 1.1] or the engines are not those two; 2 without CUDA (no --dry-run).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from peftlab.architecture import compose
from peftlab.memory import MemorySetting, predict
from peftlab.memory.report import CONTEXT, RESERVE
from peftlab.offload import DEVICE_ENGINE, OFFLOAD_ENGINE
from peftlab.train import build, validate_config

LLAMA_1B = ["model.config.hidden_size=2048", "model.config.intermediate_size=5632",
            "model.config.num_hidden_layers=22", "model.config.num_attention_heads=32",
            "model.config.num_key_value_heads=4", "model.config.vocab_size=32000",
            "model.config.max_position_embeddings=2048", "+model.dtype=bfloat16", "trainer=gpu"]
TINY = ["trainer.precision=32-true"]
RUN = ["model=tiny_llama", "task=commonsense_synthetic", "method=smt", "method.warmup_steps=2", "method.lr=1e-5",
       "method.smt_lr=1e-4", "optim.offload=true", "+model.gradient_checkpointing=true", "logger=none",
       "callbacks=none"]
GiB = 2**30
STEPS, TOLERANCE = 4, 0.10


class PhasePeaks(pl.Callback):
    """``torch.cuda.max_memory_allocated`` of each phase (reset when it starts), and the margin's real parts."""

    def __init__(self, switch: int) -> None:
        self.switch, self.peaks, self.reserved = switch, {}, {}

    def on_train_batch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if trainer.global_step in (0, self.switch) and torch.cuda.is_available():
            torch.cuda.synchronize()
            if trainer.global_step == self.switch:
                self._read("warmup")
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer: pl.Trainer, *_: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self._read("train")

    def _read(self, phase: str) -> None:
        self.peaks[phase] = torch.cuda.max_memory_allocated()
        self.reserved[phase] = torch.cuda.max_memory_reserved()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shape: the run only, no memory check")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not args.dry_run and not cuda:
        print("error: no CUDA device; run with --dry-run on a CPU", file=sys.stderr)
        return 2
    batch, seq = (4, 512) if not args.dry_run else (2, 32)
    cfg = compose([*RUN, *(TINY if args.dry_run else LLAMA_1B), f"task.batch_size={batch}",
                   f"method.block_size={16 if args.dry_run else 256}",
                   *(["method.budget_unit=blocks", "method.budget=4"] if args.dry_run else [])])
    spec, _, task = validate_config(cfg)
    module, _, _ = build(cfg)
    g = torch.Generator().manual_seed(0)
    vocab = module.model.config.vocab_size
    batches = [{"input_ids": (ids := torch.randint(3, vocab, (batch, seq), generator=g)),
                "attention_mask": torch.ones_like(ids), "labels": ids.clone()} for _ in range(STEPS)]
    peaks = PhasePeaks(switch=2)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="gpu" if not args.dry_run else "cpu", devices=1,
                         precision=cfg.trainer.precision, logger=False, callbacks=[peaks], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    engines = [e["engine"] for e in module.offload.history]
    ok = engines == [OFFLOAD_ENGINE, DEVICE_ENGINE] and module.method.phase == "blocks"
    history = "; ".join(f"{e['engine']} from step {e['from_step']}" for e in module.offload.history)
    print(f"optimizer engines: {history}")
    setting = MemorySetting(batch=batch, seq=seq, precision=str(cfg.trainer.precision), grad_checkpointing=True,
                            device="cuda" if cuda else "cpu", optimizer_offload=True)
    pred = predict(spec, cfg.method, task.head, task.num_labels, setting, task.loss,
                   make_batch=lambda _: {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in batches[0].items()},
                   state=module.method.method_state())
    for key, s in pred.phases.items():
        line = f"{pred.labels[key]}: predicted {s.peak / GiB:.2f} GiB ({s.engine})"
        if key in peaks.peaks:
            ratio = s.peak / peaks.peaks[key]
            ok &= abs(ratio - 1) <= TOLERANCE
            line += f", measured {peaks.peaks[key] / GiB:.2f} GiB, ratio {ratio:.3f}"
        print(line)
    if cuda and not args.dry_run:
        free, total = torch.cuda.mem_get_info()
        outside = total - free - torch.cuda.memory_reserved()
        worst = max(peaks.reserved[k] / peaks.peaks[k] for k in peaks.peaks)
        print(f"margin: reserved/allocated {worst:.3f}, memory outside PyTorch {outside / GiB:.2f} GiB "
              f"(assumed: +{RESERVE:.0%}, {CONTEXT / GiB:.2f} GiB)")
        ok &= worst <= 1 + RESERVE and outside <= CONTEXT
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
