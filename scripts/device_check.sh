#!/usr/bin/env bash
# Device check: the paths that only GPUs take (NCCL, fp16 loss scaling, FSDP), docs/multi_gpu.md.
#
#   bash scripts/device_check.sh                  # every GPU of the machine (1 to 8); sized for < 10 min on one
#                                                 # GPU + ~5 min of memory check + ~3 min of offload check
#                                                 # (estimates: not yet run on a GPU); MEMORY_CHECK=0 leaves
#                                                 # the memory check out
#   OUT=/some/dir bash scripts/device_check.sh    # logs, records and summary.tsv under $OUT
#   DEVICE_CHECK_CPU=1 bash scripts/device_check.sh   # dry run of the same checks on CPU (2 processes over gloo;
#                                                 # FSDP training is skipped: Lightning's FSDP needs CUDA)
#
# Each check trains a small random LLaMA (4 layers, hidden 256) on the generated commonsense task (so evaluation
# includes generation) through train.py and passes when the run exits 0 and leaves exactly one `complete` record
# that says it ran on every device with finite test metrics; the `+export` checks also export the run and
# re-evaluate it in one process (scripts/evaluate.py: same metrics). Refusal checks pass when train.py stops
# with exit status 2 and the documented message. Prints PASS/FAIL/SKIP per check, writes $OUT/summary.tsv, and
# exits 1 when any check failed. The training set is sized from the number of devices: every run takes STEPS
# (default 6) optimizer steps whatever the device count, so SMT's 4 warm-up steps fit on 1 to 8 GPUs.
#
# The checks and what passing shows:
#   ddp_lora, ddp_full          DDP over every device (NCCL on >= 2 GPUs); ddp_lora's export re-evaluates the same
#   ddp_smt_grad_only/_full     SMT's switch and re-wrap under DDP (one GPU: no collective runs)
#   ddp_smt_nccl                >= 2 GPUs: SMT grad_only with its sums in CPU memory (the GPU default) and
#                               checkpoints inside the warm-up, over NCCL, which reduces GPU memory only; SKIP on
#                               one GPU (nothing to reduce); the dry run takes the same branch over gloo
#   smt_fp16_grad_only/_full    SMT under fp16 loss scaling (16-mixed: GradScaler); grad_only on this causal LM
#                               trains nothing during the warm-up (GradScaler's "No inf checks" case); the dry run
#                               gives Lightning's MixedPrecision plugin a CPU GradScaler (its 16-mixed is bf16 on CPU)
#   fsdp_lora, fsdp_full        FSDP training + export (SKIP in the dry run); fsdp_smt_refused: the documented refusal
#   memory_prediction           the memory model against the GPU's measured peak (scripts/device_check_memory.py)
#   offload_smt                 SMT's offloaded warm-up (optim.offload=true), the switch and block training on one
#                               GPU at a LLaMA-1B shape: each phase's peak vs the prediction within 10%, and the
#                               margin's parts (scripts/device_check_offload.py; ~3 min; its own expected output)
#
# Expected output, DEVICE_CHECK_CPU=1 (exit status 0; seconds vary):
#   [device_check] 2 device(s), 6 optimizer steps per run; outputs under /tmp/peftlab_device_check.XXXXXX
#   ddp_lora                     PASS    70s  one complete record; export reproduces its metrics
#   ddp_smt_grad_only            PASS    45s  one complete record
#   ddp_smt_full                 PASS    45s  one complete record
#   ddp_smt_nccl                 PASS    45s  one complete record
#   ddp_full                     PASS    45s  one complete record
#   smt_fp16_grad_only           PASS    45s  one complete record
#   smt_fp16_full                PASS    45s  one complete record
#   fsdp_lora                    SKIP     0s  FSDP needs CUDA
#   fsdp_full                    SKIP     0s  FSDP needs CUDA
#   fsdp_smt_refused             PASS    20s  refused as documented
#   memory_prediction            PASS    30s  .venv/bin/python scripts/device_check_memory.py --dry-run
#   offload_smt                  PASS    15s  .venv/bin/python scripts/device_check_offload.py --dry-run
#   [device_check] summary: /tmp/peftlab_device_check.XXXXXX/summary.tsv
# On GPUs: the same lines with `N device(s)`, fsdp_* PASS, and on one GPU
#   ddp_smt_nccl                 SKIP     0s  needs >= 2 GPUs (one process runs no collective)
#
# Adding a check: one `check <name> <kind> [train.py overrides...]` line in the list at the end; <kind> is
# `train`, `train+export`, or `refused:<text the error must contain>`. Any other command can be appended with
# `check_cmd <name> <command...>` (pass = exit status 0), e.g. a script of its own.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-$(mktemp -d -t peftlab_device_check.XXXXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever is installed
CHECK_TIMEOUT=${CHECK_TIMEOUT:-$([ "${DEVICE_CHECK_CPU:-0}" = 1 ] && echo 400 || echo 170)}  # seconds per check

STEPS=${STEPS:-6}  # optimizer steps of every run (SMT's warm-up is 4)
BATCH=8  # per device
if [ "${DEVICE_CHECK_CPU:-0}" = 1 ]; then
  DEVICES=${DEVICES:-2}
  HW=(trainer.accelerator=cpu "trainer.devices=$DEVICES")
  PRECISION=(trainer.precision=32-true)
  FP16=(trainer.precision=null "+trainer.plugins=[{_target_:pytorch_lightning.plugins.MixedPrecision,precision:16-mixed,device:cpu,scaler:{_target_:torch.amp.GradScaler,device:cpu}}]")
  OFFLOAD=(method.offload_grad_sums=true)  # the GPU default (sums in CPU memory), taken on the CPU
  MODEL=(model=tiny_llama model.config.vocab_size=512)
  VAL=16
  DATA=(task.val_set_size=$VAL task.num_eval=4 task.eval_batch_size=16)
else
  DEVICES=${DEVICES:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')}
  HW=(trainer.accelerator=gpu "trainer.devices=$DEVICES")
  PRECISION=(trainer.precision=bf16-mixed)
  FP16=(trainer.precision=16-mixed)
  OFFLOAD=()  # offload_grad_sums: null = CPU memory on a GPU
  MODEL=(model=tiny_llama model.config.vocab_size=512 model.config.hidden_size=256 model.config.intermediate_size=512
         model.config.num_hidden_layers=4 model.config.num_attention_heads=8 model.config.num_key_value_heads=8)
  VAL=32
  DATA=(task.val_set_size=$VAL task.num_eval=16 task.eval_batch_size=32)
fi
if [ "${DEVICES:-0}" -lt 1 ]; then
  echo "no GPU found (nvidia-smi); DEVICE_CHECK_CPU=1 runs the CPU dry run" >&2
  exit 1
fi
# every run: STEPS global batches of DEVICES x BATCH examples (the validation records are held out of task.num_train)
DATA+=("task.num_train=$((STEPS * DEVICES * BATCH + VAL))" "task.batch_size=$BATCH")
COMMON=("${MODEL[@]}" task=commonsense_synthetic "${DATA[@]}" trainer.max_epochs=1 trainer.enable_progress_bar=false
        logger=none callbacks=default callbacks.checkpoint.every_n_train_steps=null
        ++callbacks.checkpoint.every_n_epochs=1 optim.warmup_steps=1 seed=0)
SMT=(method=smt method.block_size=32 method.budget_unit=blocks method.budget=8 method.warmup_steps=4
     method.lr=1e-4 method.smt_lr=1e-3)
# FSDP units of >= 100k parameters: attention, MLP and embeddings each their own unit (at 7B the policy's 100M does
# the same), so parameter names carry FSDP's wrapper prefixes as they do at paper scale
FSDP_UNITS=(trainer.strategy.auto_wrap_policy.min_num_params=100000)
echo "[device_check] $DEVICES device(s), $STEPS optimizer steps per run; outputs under $OUT"
printf 'check\tresult\tseconds\tdetail\n' > "$OUT/summary.tsv"
FAILED=0

report() {  # name result seconds detail
  printf '%-28s %-5s %4ss  %s\n' "$1" "$2" "$3" "$4"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUT/summary.tsv"
  [ "$2" = FAIL ] && FAILED=1
  return 0
}

verify_record() {  # results dir, expected processes → prints the record path, or the problem (exit 1)
  "$PY" - "$1" "$2" <<'EOF'
import json, math, pathlib, sys
records = sorted(pathlib.Path(sys.argv[1]).rglob("*.json"))
if len(records) != 1:
    sys.exit(f"{len(records)} records (expected one, from global rank 0)")
r = json.loads(records[0].read_text())
tests = {k: v for k, v in r.get("metrics", {}).items() if k.startswith("test/")}
problems = [p for p, bad in [(f"status {r.get('status')}", r.get("status") != "complete"),
                             (f"processes {r.get('processes')}", r.get("processes") != int(sys.argv[2])),
                             ("no finite test metric", not tests or not all(math.isfinite(v) for v in tests.values()))]
            if bad]
if problems:
    sys.exit("; ".join(problems))
print(records[0])
EOF
}

check() {  # name kind overrides...
  local name=$1 kind=$2 start dir rc record detail precision=("${PRECISION[@]}")
  shift 2
  [[ " $* " == *" trainer.precision="* ]] && precision=()  # the check sets its own
  if [ "${DEVICE_CHECK_CPU:-0}" = 1 ] && [[ " $* " == *" trainer=fsdp "* ]] && [[ $kind != refused:* ]]; then
    report "$name" SKIP 0 "FSDP needs CUDA"
    return
  fi
  start=$SECONDS
  dir="$OUT/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  timeout "$CHECK_TIMEOUT" "$PY" train.py "${COMMON[@]}" "$@" "${HW[@]}" "${precision[@]}" "hydra.run.dir=$dir/out" \
    "paths.results_dir=$dir/runs" > "$dir/train.log" 2>&1
  rc=$?
  if [[ $kind == refused:* ]]; then
    if [ $rc -eq 2 ] && grep -qF "${kind#refused:}" "$dir/train.log"; then
      report "$name" PASS $((SECONDS - start)) "refused as documented"
    else
      report "$name" FAIL $((SECONDS - start)) "exit $rc, expected 2 and '${kind#refused:}' (see $dir/train.log)"
    fi
    return
  fi
  if [ $rc -ne 0 ]; then
    report "$name" FAIL $((SECONDS - start)) "train.py exit $rc: $(grep -E 'Error|error' "$dir/train.log" | tail -1)"
    return
  fi
  if ! record=$(verify_record "$dir/runs" "$DEVICES" 2>&1); then
    report "$name" FAIL $((SECONDS - start)) "record: $record"
    return
  fi
  detail="one complete record"
  if [ "$kind" = train+export ]; then
    if ! "$PY" scripts/export.py "$record" "$dir/export" > "$dir/export.log" 2>&1 \
        || ! "$PY" scripts/evaluate.py "$dir/export" >> "$dir/export.log" 2>&1; then
      report "$name" FAIL $((SECONDS - start)) "export/evaluate did not reproduce the metrics (see $dir/export.log)"
      return
    fi
    detail="$detail; export reproduces its metrics"
  fi
  report "$name" PASS $((SECONDS - start)) "$detail"
}

skip() {  # name reason
  report "$1" SKIP 0 "$2"
}

check_cmd() {  # name command... (pass = exit status 0)
  local name=$1 start=$SECONDS
  shift
  if "$@" > "$OUT/$name.log" 2>&1; then
    report "$name" PASS $((SECONDS - start)) "$*"
  else
    report "$name" FAIL $((SECONDS - start)) "exit $? (see $OUT/$name.log)"
  fi
}

# ---- the checks (append new ones here) ----
check ddp_lora            train+export trainer=ddp method=lora method.lr=1e-3
check ddp_smt_grad_only   train        trainer=ddp "${SMT[@]}" method.warmup_mode=grad_only
check ddp_smt_full        train        trainer=ddp "${SMT[@]}" method.warmup_mode=full
if [ "$DEVICES" -ge 2 ]; then  # sums in CPU memory, checkpoints (which save them) inside the warm-up
  check ddp_smt_nccl      train        trainer=ddp "${SMT[@]}" method.warmup_mode=grad_only "${OFFLOAD[@]}" \
    callbacks.checkpoint.every_n_train_steps=2 ++callbacks.checkpoint.every_n_epochs=null
else
  skip ddp_smt_nccl "needs >= 2 GPUs (one process runs no collective)"
fi
check ddp_full            train        trainer=ddp method=full method.lr=1e-4
check smt_fp16_grad_only  train        trainer=ddp "${SMT[@]}" method.warmup_mode=grad_only "${FP16[@]}"
check smt_fp16_full       train        trainer=ddp "${SMT[@]}" method.warmup_mode=full "${FP16[@]}"
check fsdp_lora           train+export trainer=fsdp method=lora method.lr=1e-3 "${FSDP_UNITS[@]}"
check fsdp_full           train+export trainer=fsdp method=full method.lr=1e-4 "${FSDP_UNITS[@]}"
check fsdp_smt_refused    "refused:changes its trainable tensors during training" trainer=fsdp "${SMT[@]}"
# the memory model against torch.cuda.max_memory_allocated on a LLaMA-1B shape, then bench_methods --device cuda
# (results/bench/memory_check_gpu.md, bench_methods_gpu.md; ~5 more minutes); MEMORY_CHECK=0 leaves it out
if [ "${MEMORY_CHECK:-1}" = 1 ]; then
  if [ "${DEVICE_CHECK_CPU:-0}" = 1 ]; then
    check_cmd memory_prediction "$PY" scripts/device_check_memory.py --dry-run
  else
    check_cmd memory_prediction "$PY" scripts/device_check_memory.py
  fi
fi

# SMT's offloaded warm-up, the switch and block training: each phase's peak vs the prediction (docs/memory.md)
check_cmd offload_smt "$PY" scripts/device_check_offload.py $([ "${DEVICE_CHECK_CPU:-0}" = 1 ] && echo --dry-run)
echo "[device_check] summary: $OUT/summary.tsv"
exit $FAILED
