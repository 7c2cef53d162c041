"""Training memory of any model × method × task, predicted without a GPU and without weights.

``python -m peftlab.budget model=llama_7b method=smt --memory batch=16 seq=256 precision=bf16-mixed
grad_checkpointing=true`` (see :mod:`peftlab.budget`) prints the split below for every phase of the method.

How each part is obtained (docs/memory.md):

- **States** are counted from the model the method builds, at the real shape, on fake tensors (shapes and
  dtypes, no memory): the backbone is built on the meta device as the budget calculator builds it, the method
  is applied exactly as a run applies it, and every parameter is counted with the dtype the precision rule
  gives it. The rule (``precision=bf16-mixed``, the GPU trainer): frozen weights stay in the model's load dtype
  (bf16 for the LLaMA configs), every trained tensor is an fp32 parameter, so its gradient is fp32 and AdamW
  keeps two fp32 moments (+ a 4-byte step count per tensor); there is no separate master copy (the fp32
  parameters are the master). ``16-mixed`` is the same layout under fp16 autocast. ``precision=bf16-master``
  is the DeepSpeed bf16 layout of the official SMT code (HectorHHZ/Sparse_Matrix_Tuning
  ``deepspeed/fine_tune.py``, ZeRO ``bf16``): every weight bf16, bf16 gradients, an fp32 master copy of the
  trained weights and fp32 Adam moments, no autocast.
- **Method state**: tensors the method adds as buffers (CapaBoost masks, SHiRA/SpIEL indices, SMT block
  coordinates) are counted from the model; tensors a method holds outside the model come from a per-method
  planner (:data:`PLANNERS`): SMT's fp32 warm-up gradient sums (on the device, or in CPU memory: the default
  on a GPU, as the official code), SPT's fp32 sensitivity sums, SpIEL's candidates, AdaLoRA's importance
  scores.
- **Activations** are not a formula: the training forward runs once on fake tensors of the real shape
  (``torch._subclasses.FakeTensorMode`` on the CPU device, so kernels such as the fused attention are chosen
  as on a real device) under ``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor saved for
  backward; storages are deduplicated and parameters and buffers excluded, as ``scripts/bench_methods.py``
  measures real runs. Each saved tensor is attributed to the transformer block that saved it (or to the
  embeddings/head/loss outside the blocks), and autocast's bf16 copies of trained fp32 weights are told apart.
  Without gradient checkpointing the activations are every saved tensor. With it, a block keeps only its
  inputs, autocast's weight copies live until the forward ends, and one block's activations come back while it
  is recomputed in backward (each block is measured as its recompute runs it). A block identical to one already
  run in the same forward is replayed from that one's record (:mod:`peftlab.memory.replay`, exact).

Peak: the largest of four moments of a step, with S = weights + optimizer state + method state on the device:
end of forward (S + activations), start of backward (autocast copies freed; the loss backward holds two
more buffers the size of the largest tensor saved outside the blocks, the logits' log-softmax for a language
model), recompute of the largest block under checkpointing (S + block inputs + that block + all gradients), and
the optimizer step (S + gradients + AdamW's multi-tensor workspace, one fp32 copy of the trained parameters for
``torch._foreach_sqrt``, torch's default on CUDA; the largest trained tensor with ``foreach=false``). Allocator
caching, fragmentation, CUDA context and cuBLAS workspaces are not included: the margin of
:func:`peftlab.memory.report.with_margin` adds them, with its sources.

Methods whose trained set depends on data (SMT's block selection, SPT's allocation) are predicted from the
state of a real run when one is given (``state=``: what ``Method.method_state()`` returns), else under a
stated assumption (see each planner's docstring).
"""


from peftlab.memory.planners import PLANNERS, spread_selection
from peftlab.memory.predict import predict, predict_config
from peftlab.memory.report import describe, fits, memory_setting, report, split_overrides
from peftlab.memory.states import FP32, GiB, MemorySetting, Prediction, Split

__all__ = ["FP32", "PLANNERS", "GiB", "MemorySetting", "Prediction", "Split", "describe", "fits", "memory_setting",
           "predict", "predict_config", "report", "spread_selection", "split_overrides"]
