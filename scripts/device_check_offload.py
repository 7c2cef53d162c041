"""SMT's offloaded warm-up on one GPU (``optim.offload=true``, :mod:`peftlab.offload`), the switch, block training:
measured ``torch.cuda.max_memory_allocated`` per phase against the memory model's prediction (target: within 10%),
and the margin the model assumes (docs/memory.md) against the memory the device really lost.

Usage:
    python scripts/device_check_offload.py              # one CUDA GPU (called by scripts/device_check.sh), ~3 min
    python scripts/device_check_offload.py --dry-run    # CPU: the GPU run's predictions, then the run on a tiny shape

The run: a random LLaMA-1B-shaped model (TinyLlama-1.1B's shape: 22 layers, hidden 2048, intermediate 5632, 32
heads, 4 KV heads, vocab 32000) loaded in bf16, ``trainer=gpu`` (bf16-mixed), gradient checkpointing, batches of
4 × 512 random tokens, SMT at the paper's ratio (0.84%, 256² blocks of q, k, v) with ``method.warmup_steps=2``,
4 optimizer steps: 2 of warm-up with the optimizer in CPU memory, the switch, 2 of block training with AdamW on
the GPU. The peak of each phase is read after ``torch.cuda.reset_peak_memory_stats`` at its start; the prediction
(:func:`predicted`, the one code path of both modes) is ``peftlab.memory.predict`` for the same model, batch and
setting, with the run's own block selection. The margin (``peftlab.memory.report``): the CUDA context after
initialisation and the device memory outside PyTorch at the end (``torch.cuda.mem_get_info`` less
``memory_reserved``; this process alone on the GPU) against ``CONTEXT``, and each phase's ``max_memory_reserved /
max_memory_allocated`` against ``1 + RESERVE``.

Expected output on a GPU. The predictions, as ``--dry-run`` computes them on a CPU with this code (SMT's blocks
spread over the q, k, v matrices, the worst case for activations; the GPU run predicts with its own selection):

    expected on the GPU: warm-up (full): predicted 3.11 GiB (AdamW in CPU memory (optim.offload); ...)
    expected on the GPU: block training: predicted 3.07 GiB (AdamW on the device; ...)

so a passing GPU run prints (measured values and the context size are the device's):

    CUDA context after initialisation: ... GiB (NVIDIA ...)      (published: ~0.3-0.43 GiB, peftlab.memory.report)
    optimizer engines: AdamW in CPU memory: ... (peftlab.offload) from step 0; AdamW on the device from step 2
    warm-up (full): predicted ≤ 3.11 GiB (AdamW in CPU memory (optim.offload)), measured ... GiB, ratio in [0.9, 1.1]
    block training: predicted ≤ 3.07 GiB (AdamW on the device), measured ... GiB, ratio in [0.9, 1.1]
    margin: max_memory_reserved / max_memory_allocated warm-up (full) ..., block training ... (assumed ≤ 1.10);
    memory outside PyTorch at the end ... GiB (assumed ≤ 1.00 GiB: the context with its kernels)
    PASS

Exit status 1 when a ratio is outside [0.9, 1.1], the engines are not those two, or the margin's parts exceed
their assumed sizes; 2 without CUDA (no --dry-run).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from peftlab.architecture import compose
from peftlab.memory import MemorySetting, Prediction, predict
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
BATCH, SEQ = 4, 512  # the GPU run's batch


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


def run_config(dry_run: bool) -> DictConfig:
    """The run's config: the LLaMA-1B shape on a GPU (``trainer=gpu``, bf16-mixed), the tiny model on the CPU."""
    batch = 2 if dry_run else BATCH
    return compose([*RUN, *(TINY if dry_run else LLAMA_1B), f"task.batch_size={batch}",
                    f"method.block_size={16 if dry_run else 256}",
                    *(["method.budget_unit=blocks", "method.budget=4"] if dry_run else [])])


def predicted(cfg: DictConfig, seq: int, cuda: bool, state: dict[str, Any] | None) -> Prediction:
    """The memory model's prediction for the run of ``cfg`` (batch × ``seq`` tokens, gradient checkpointing, the
    optimizer offloaded, the run's precision); ``state``: the run's SMT selection, None: the spread assumption."""
    spec, _, task = validate_config(cfg)
    batch = int(cfg.task.batch_size)
    setting = MemorySetting(batch=batch, seq=seq, precision=str(cfg.trainer.precision), grad_checkpointing=True,
                            device="cuda" if cuda else "cpu", optimizer_offload=True)
    return predict(spec, cfg.method, task.head, task.num_labels, setting, task.loss,
                   make_batch=lambda _: {"input_ids": torch.zeros(batch, seq, dtype=torch.long),
                                         "attention_mask": torch.ones(batch, seq, dtype=torch.long),
                                         "labels": torch.zeros(batch, seq, dtype=torch.long)},
                   state=state)


def outside_pytorch() -> int:
    """Device memory in use that the caching allocator does not hold: the CUDA context, its lazily loaded kernels
    and library handles (this process is alone on the GPU)."""
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shape: the run and the prediction path; "
                        "prints the GPU run's predictions (no memory check)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    if not args.dry_run and not cuda:
        print("error: no CUDA device; run with --dry-run on a CPU", file=sys.stderr)
        return 2
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # creates the context
        context = outside_pytorch()
        print(f"CUDA context after initialisation: {context / GiB:.2f} GiB ({torch.cuda.get_device_name()})")
    else:  # what the GPU run will predict, by the same code path (fake tensors on the CPU)
        for key, s in (gpu := predicted(run_config(False), SEQ, True, None)).phases.items():
            print(f"expected on the GPU: {gpu.labels[key]}: predicted {s.peak / GiB:.2f} GiB ({s.engine}; SMT blocks "
                  "spread, the run's selection replaces them)")
    seq = 32 if args.dry_run else SEQ
    cfg = run_config(args.dry_run)
    module, _, _ = build(cfg)
    g = torch.Generator().manual_seed(0)
    vocab, batch = module.model.config.vocab_size, int(cfg.task.batch_size)
    batches = [{"input_ids": (ids := torch.randint(3, vocab, (batch, seq), generator=g)),
                "attention_mask": torch.ones_like(ids), "labels": ids.clone()} for _ in range(STEPS)]
    peaks = PhasePeaks(switch=2)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="gpu" if cuda else "cpu", devices=1,
                         precision=cfg.trainer.precision, logger=False, callbacks=[peaks], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    engines = [e["engine"] for e in module.offload.history]
    ok = engines == [OFFLOAD_ENGINE, DEVICE_ENGINE] and module.method.phase == "blocks"
    history = "; ".join(f"{e['engine']} from step {e['from_step']}" for e in module.offload.history)
    print(f"optimizer engines: {history}")
    pred = predicted(cfg, seq, cuda, module.method.method_state())
    for key, s in pred.phases.items():
        line = f"{pred.labels[key]}: predicted {s.peak / GiB:.2f} GiB ({s.engine})"
        if key in peaks.peaks:
            ratio = s.peak / peaks.peaks[key]
            ok &= abs(ratio - 1) <= TOLERANCE
            line += f", measured {peaks.peaks[key] / GiB:.2f} GiB, ratio {ratio:.3f}"
        print(line)
    if cuda:
        outside = outside_pytorch()
        reserve = {k: peaks.reserved[k] / peaks.peaks[k] for k in peaks.peaks}
        print("margin: max_memory_reserved / max_memory_allocated "
              + ", ".join(f"{pred.labels[k]} {r:.3f}" for k, r in reserve.items())
              + f" (assumed ≤ {1 + RESERVE:.2f}); memory outside PyTorch at the end {outside / GiB:.2f} GiB "
              f"(assumed ≤ {CONTEXT / GiB:.2f} GiB: the context with its kernels)")
        ok &= max(reserve.values()) <= 1 + RESERVE and outside <= CONTEXT
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
