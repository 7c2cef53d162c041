"""The prediction: a model × method × head built on fake tensors, phase by phase (see :mod:`peftlab.memory`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from peftlab.architecture import meta_backbone
from peftlab.config_utils import to_dict
from peftlab.memory.activations import Activations, _fakeify, _set_dtypes, example_batch, measure_activations
from peftlab.memory.planners import PLANNERS, Phase, _default_phases, _numel
from peftlab.memory.states import AUTOCAST, FP32, Batch, LossFn, MemorySetting, Prediction, Split
from peftlab.methods import build_method
from peftlab.models import ModelSpec
from peftlab.train import validate_config


def _split(model: nn.Module, phase: Phase, probed: set[int], setting: MemorySetting, acts: Activations,
           backbone_buffers: int) -> Split:
    """The split of one phase; parameters carry the dtypes the precision rule gives them in this phase; ``probed``:
    ids of the parameters whose gradient the method sums and frees at once (never updated)."""
    params = list({id(p): p for p in model.parameters()}.values())
    trained = [p for p in params if p.requires_grad and id(p) not in probed]
    frozen = [p for p in params if not (p.requires_grad and id(p) not in probed)]
    trained_bytes = sum(p.numel() * p.itemsize for p in trained)
    s = Split(trainable=_numel(trained), frozen_weights=sum(p.numel() * p.itemsize for p in frozen) + backbone_buffers,
              trained_params=trained_bytes,
              master_copies=FP32 * _numel(trained) if setting.precision == "bf16-master" else 0,
              gradients=trained_bytes,
              optimizer_state=2 * FP32 * _numel(trained) + FP32 * len(trained),
              method_state=sum(b.numel() * b.itemsize for b in model.buffers()) - backbone_buffers + phase.held_device,
              offloaded=phase.held_cpu)
    if setting.grad_checkpointing:
        s.activations = acts.block_inputs + acts.outside + acts.weight_copies
    else:
        s.activations = acts.total
    if setting.optimizer_offload:  # DeepSpeed's CPU Adam: the master and the moments live and step in CPU memory
        s.offloaded += s.master_copies + s.optimizer_state
        s.master_copies = s.optimizer_state = 0
    states = s.frozen_weights + s.trained_params + s.master_copies + s.optimizer_state + s.method_state
    largest = max([p.numel() * FP32 for p in trained], default=0) if not setting.optimizer_offload else 0
    probe = max([p.numel() * p.itemsize for p in params if id(p) in probed], default=0)
    s.moments = {"end of forward": states + s.activations,
                 "start of backward": states + s.activations - acts.weight_copies + 2 * acts.largest_outside + probe,
                 "optimizer step": states + s.gradients + (FP32 * _numel(trained) if setting.foreach
                                                           and not setting.optimizer_offload else largest)}
    if setting.grad_checkpointing:
        s.moments["block recompute"] = (states + acts.block_inputs + max(acts.per_block, default=0) + s.gradients
                                        + probe)
    return s


def predict(spec: ModelSpec, method_node: DictConfig | dict[str, Any], head: str, num_labels: int | None,
            setting: MemorySetting, loss_fn: LossFn, make_batch: Callable[[nn.Module], Batch] | None = None,
            state: dict[str, Any] | None = None) -> Prediction:
    """Predicted training memory of ``spec`` with the method of ``method_node`` and the task head ``head``.

    ``loss_fn(model, batch)`` is the training loss (a task's ``loss``); ``make_batch(model)`` builds the batch
    (default :func:`example_batch`); ``state`` is a run's ``Method.method_state()`` to predict that run's
    structure (SMT's selected blocks, SPT's plan) instead of the planner's assumption.
    """
    base = meta_backbone(spec, head, num_labels)
    backbone_buffers = sum(b.numel() * b.itemsize for b in base.buffers())
    method = build_method(to_dict(method_node) if isinstance(method_node, DictConfig) else dict(method_node))
    with torch.device("meta"):
        model = method.apply(copy.deepcopy(base), spec).train()  # training mode, as the Lightning module sets it
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
        probed = {id(p) for n, p in model.named_parameters() if n in method.probed_parameters(model)}
        trained = {i for i, p in params.items() if p.requires_grad and i not in probed}
        if setting.precision == "bf16-master":  # DeepSpeed bf16: the whole model in bf16
            _set_dtypes(model, dict.fromkeys(params, torch.bfloat16), mode)
        else:  # the precision rule: trained tensors fp32, frozen ones in their load dtype
            _set_dtypes(model, {i: torch.float32 if i in trained else load[i] for i in params}, mode)
        acts = measure_activations(model, batch, loss_fn, AUTOCAST.get(setting.precision), mode)
        phases[phase.key] = _split(model, phase, probed, setting, acts, backbone_buffers)
        labels[phase.key] = phase.label
        _set_dtypes(model, load, mode)  # load dtypes again before the next phase restructures the model
    inputs = ", ".join(f"{k} {'×'.join(map(str, v.shape))}" for k, v in batch.items() if v.dim() > 1)
    return Prediction(phases, labels, inputs, notes)


def predict_config(cfg: DictConfig, setting: MemorySetting) -> Prediction:
    """:func:`predict` for a composed project config (model × method × task), with the task's own loss."""
    spec, _, task = validate_config(cfg)
    return predict(spec, cfg.method, task.head, task.num_labels, setting, task.loss)
