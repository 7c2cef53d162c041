"""The prediction: a model × method × head built on fake tensors, phase by phase (see :mod:`peftlab.memory`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from peftlab.architecture import meta_backbone
from peftlab.config_utils import require, to_dict
from peftlab.memory.activations import Activations, _fakeify, _set_dtypes, example_batch, measure_activations
from peftlab.memory.planners import BUILDERS, PLANNERS, Phase, _default_phases, _numel
from peftlab.memory.states import AUTOCAST, FP32, HALF_MODEL, Batch, LossFn, MemorySetting, Prediction, Split
from peftlab.methods import build_method
from peftlab.models import ModelSpec
from peftlab.train import validate_config


def _split(model: nn.Module, phase: Phase, probed: set[int], setting: MemorySetting, acts: Activations,
           backbone_buffers: int, offloaded: bool) -> Split:
    """The split of one phase; parameters carry the dtypes the precision rule (or the offload layout) gives them in
    this phase; ``probed``: ids of the parameters whose gradient the method sums and frees at once (never updated);
    ``offloaded``: the phase's optimizer runs in CPU memory (:mod:`peftlab.offload`)."""
    params = list({id(p): p for p in model.parameters()}.values())
    trained = [p for p in params if p.requires_grad and id(p) not in probed]
    frozen = [p for p in params if not (p.requires_grad and id(p) not in probed)]
    n = _numel(trained)
    trained_bytes = sum(p.numel() * p.itemsize for p in trained)
    master = FP32 * n if setting.precision == "bf16-master" else 0
    moments = 2 * trained_bytes if setting.precision == "bf16-true" else 2 * FP32 * n  # AdamW: the param's dtype
    s = Split(trainable=n, frozen_weights=sum(p.numel() * p.itemsize for p in frozen) + backbone_buffers,
              trained_params=trained_bytes, master_copies=master, gradients=trained_bytes,
              optimizer_state=moments + FP32 * len(trained),
              method_state=sum(b.numel() * b.itemsize for b in model.buffers()) - backbone_buffers + phase.held_device,
              offloaded=phase.held_cpu)
    if setting.grad_checkpointing:
        s.activations = acts.block_inputs + acts.outside + acts.weight_copies
    else:
        s.activations = acts.total
    # AdamW's multi-tensor workspace: one copy of what it steps (the masters when there are); per tensor: the largest
    stepped = [p.numel() * (FP32 if master else p.itemsize) for p in trained]
    workspace = sum(stepped) if setting.foreach else max(stepped, default=0)
    in_backward = 0  # gradients alive at the start of backward
    if offloaded:  # peftlab.offload: fp32 master + fp32 gradient + two fp32 moments per weight in CPU memory
        s.offloaded += 4 * FP32 * n + FP32 * len(trained)
        s.engine = "AdamW in CPU memory (optim.offload)"
        # on the device: one gradient at a time, moved off and freed once accumulated; the step and the cast of
        # the masters to the weights' dtype happen on the CPU
        s.master_copies = s.optimizer_state = workspace = 0
        s.gradients = in_backward = max((p.numel() * p.itemsize for p in trained), default=0)
    states = s.frozen_weights + s.trained_params + s.master_copies + s.optimizer_state + s.method_state
    probe = max([p.numel() * p.itemsize for p in params if id(p) in probed], default=0)
    s.moments = {"end of forward": states + s.activations,
                 "start of backward": (states + s.activations - acts.weight_copies + 2 * acts.largest_outside + probe
                                       + in_backward),
                 "optimizer step": states + (0 if offloaded else s.gradients) + workspace}
    if setting.grad_checkpointing:
        s.moments["block recompute"] = (states + acts.block_inputs + max(acts.per_block, default=0) + s.gradients
                                        + probe)
    return s


def predict(spec: ModelSpec, method_node: DictConfig | dict[str, Any], head: str, num_labels: int | None,
            setting: MemorySetting, loss_fn: LossFn, make_batch: Callable[[nn.Module], Batch] | None = None,
            state: dict[str, Any] | None = None, replay_blocks: bool = True) -> Prediction:
    """Predicted training memory of ``spec`` with the method of ``method_node`` and the task head ``head``.

    ``loss_fn(model, batch)`` is the training loss (a task's ``loss``); ``make_batch(model)`` builds the batch
    (default :func:`example_batch`); ``state`` is a run's ``Method.method_state()`` to predict that run's
    structure (SMT's selected blocks, SPT's plan) instead of the planner's assumption. ``replay_blocks=False`` runs
    every block instead of replaying identical ones (:mod:`peftlab.memory.replay`; the same numbers, slower).
    """
    # the backbone as the run builds it with the setting's checkpointing (transformers then drops the KV cache and
    # makes the embeddings' output require grad); the measurement runs each block as its recompute does
    base = meta_backbone(dataclasses.replace(spec, gradient_checkpointing=setting.grad_checkpointing), head,
                         num_labels)
    backbone_buffers = sum(b.numel() * b.itemsize for b in base.buffers())
    method = build_method(to_dict(method_node) if isinstance(method_node, DictConfig) else dict(method_node))
    with torch.device("meta"):
        build = BUILDERS.get(method.name)
        model = (build(method, base, spec) if build else method.apply(base, spec)).train()  # as the module sets it
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fakeify(model, mode)
    with mode:
        batch = make_batch(model) if make_batch else example_batch(model, head, setting, num_labels)
    plan = PLANNERS.get(method.name, _default_phases)
    notes: list[str] = []
    phases: dict[str, Split] = {}
    labels: dict[str, str] = {}
    load: dict[int, torch.dtype] = {}  # parameter id → load dtype
    for phase in plan(method, model, setting, state, notes):
        _fakeify(model, mode)  # tensors a planner's restructuring created for real
        params = {id(p): p for p in model.parameters()}
        load.update({i: p.dtype for i, p in params.items() if i not in load})
        # what the method probes in this phase (SMT's grad_only warm-up, SPT's sensitivity pass), as a run asks it
        probed_names = method.probed_parameters(model)
        probed = {id(p) for n, p in model.named_parameters() if n in probed_names}
        trained = {i for i, p in params.items() if p.requires_grad and i not in probed}
        # peftlab.offload: the phases that train every weight; their weights keep the load dtype on the device
        offloaded = bool(setting.optimizer_offload) and len(trained) == len(params)
        if setting.precision in HALF_MODEL:  # DeepSpeed bf16 / pure bf16: the whole model in bf16
            _set_dtypes(model, dict.fromkeys(params, torch.bfloat16), mode)
        elif offloaded:
            _set_dtypes(model, load, mode)
        else:  # the precision rule: trained tensors fp32, frozen ones in their load dtype
            _set_dtypes(model, {i: torch.float32 if i in trained else load[i] for i in params}, mode)
        acts = measure_activations(model, batch, loss_fn, AUTOCAST.get(setting.precision), mode, replay_blocks)
        phases[phase.key] = _split(model, phase, probed, setting, acts, backbone_buffers, offloaded)
        labels[phase.key] = phase.label
        _set_dtypes(model, load, mode)  # load dtypes again before the next phase restructures the model
    require(not setting.optimizer_offload or any(s.engine != Split.engine for s in phases.values()),
            f"optim.offload=true moves the optimizer of a phase that trains every parameter, and method "
            f"'{method.name}' has none: set optim.offload=false")
    inputs = ", ".join(f"{k} {'×'.join(map(str, v.shape))}" for k, v in batch.items() if v.dim() > 1)
    return Prediction(phases, labels, inputs, notes)


def predict_config(cfg: DictConfig, setting: MemorySetting, replay_blocks: bool = True) -> Prediction:
    """:func:`predict` for a composed project config (model × method × task), with the task's own loss."""
    spec, _, task = validate_config(cfg)
    return predict(spec, cfg.method, task.head, task.num_labels, setting, task.loss, replay_blocks=replay_blocks)
