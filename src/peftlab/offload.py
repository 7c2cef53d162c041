"""The optimizer of a full-parameter phase in CPU memory: ZeRO-Offload's layout, for one process (docs/memory.md).

``optim.offload=true`` applies to the phases that train every parameter of the model (full fine-tuning, SMT's
official warm-up): the official SMT code runs that warm-up under DeepSpeed ZeRO-2 with ``offload_optimizer: cpu``
(HectorHHZ/Sparse_Matrix_Tuning ``peft/configs/fft_deepspeed_config.json``) and re-initialises DeepSpeed without
offload for block training; here the optimizer built for a full-parameter phase is moved to CPU memory, and the
next phase (SMT's blocks) gets the ordinary AdamW on the device again.

Layout of an offloaded phase (what DeepSpeed's ZeRO-2 with CPU offload keeps where, ``deepspeed/runtime/zero/
stage_1_and_2.py``: bf16 weights on the GPU, each gradient copied to the CPU's fp32 partition during backward, the
fp32 master and Adam's moments stepped on the CPU):

- **device**: the weights in their load dtype (bf16 for the LLaMA configs) and, during backward, the gradient of
  one tensor at a time: a hook that runs after each gradient is accumulated
  (``register_post_accumulate_grad_hook``) adds it to the CPU gradient and frees it;
- **CPU memory**: an fp32 master copy of every weight, its fp32 gradient (summed over accumulated micro-batches),
  and torch's own ``AdamW`` (the same class and hyper-parameters the module built) stepping the masters; after each
  step the masters are cast to the load dtype and copied into the weights (as DeepSpeed copies its fp32 partition
  into the bf16 model).

The precision rule's promise holds (:mod:`peftlab.precision`): every update is added to an fp32 master; the device
weights are the masters rounded to the load dtype (DeepSpeed's bf16 model copy). On an fp32 model the masters equal
the weights and the run takes exactly the steps of ``AdamW`` on the device (tested on CPU, to the bit).

A method that reads the step's gradient at ``on_before_optimizer_step`` (SMT's full warm-up sums) reads it through
:func:`gradient`: in an offloaded phase ``.grad`` is freed during backward and the step's gradient is the master's.

The optimizer returned is a plain ``torch.optim.AdamW`` over the masters, so Lightning's automatic optimization,
gradient clipping (the norm of the fp32 CPU gradients), the lr scheduler and checkpoints need nothing special: the
masters travel in the optimizer's state dict (a state-dict hook), so a resumed run continues from the exact fp32
values, not from the rounded weights.

Not supported (refused before training, :func:`check`): several processes (the hooks would read each process's
gradient before DDP averages it, and nothing here shards the CPU state the way ZeRO-2 does), and ``16-mixed``
(fp16 loss scaling would have to unscale the CPU gradients).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.hooks import RemovableHandle

from peftlab.config_utils import require

DEVICE_ENGINE = "AdamW on the device"
OFFLOAD_ENGINE = "AdamW in CPU memory: fp32 master, gradients and moments off the device (peftlab.offload)"
MASTERS = "peftlab_offload_masters"  # the key of the fp32 masters in the optimizer's state dict
_MASTER = "_peftlab_offload_master"  # the attribute of an offloaded weight that holds its fp32 CPU master


def gradient(param: torch.Tensor) -> torch.Tensor | None:
    """The gradient of ``param`` this optimizer step will apply: ``.grad``, or in an offloaded phase its fp32
    master's (the hooks moved it there during backward and freed ``.grad``). Methods that read the step's gradient
    at ``on_before_optimizer_step`` (SMT's full warm-up) read it through this."""
    master = getattr(param, _MASTER, None)
    return param.grad if master is None else master.grad


def trains_every_parameter(model: nn.Module) -> bool:
    """Whether the current phase trains the whole model (full fine-tuning, SMT's ``full`` warm-up)."""
    return all(p.requires_grad for p in model.parameters())


def check(cfg: DictConfig) -> None:
    """Settings ``optim.offload=true`` cannot run with, before anything loads."""
    if not OmegaConf.select(cfg, "optim.offload", default=False):
        return
    trainer = cfg.get("trainer") or {}
    strategy, devices = trainer.get("strategy", "auto"), trainer.get("devices", 1)
    require(strategy == "auto" and devices in (1, "1") and trainer.get("num_nodes", 1) == 1,
            f"optim.offload=true keeps one process's optimizer in CPU memory and is not sharded over processes, but "
            f"trainer.strategy={strategy if isinstance(strategy, str) else 'FSDP'} trainer.devices={devices}: run it "
            "on one device (trainer=gpu), or optim.offload=false (docs/memory.md)")
    precision = str(trainer.get("precision", "32-true"))
    require(precision not in ("16-mixed", "16"), f"optim.offload=true with trainer.precision={precision}: fp16 loss "
            "scaling of the CPU gradients is not supported; use trainer.precision=bf16-mixed")


class CpuOffload:
    """Moves the optimizer of each full-parameter phase to CPU memory; :attr:`history` says which engine ran
    from which step (the run record's ``optimizer``)."""

    def __init__(self, enabled: bool, model: nn.Module) -> None:
        require(not enabled or trains_every_parameter(model), "optim.offload=true moves the optimizer of a phase "
                "that trains every parameter (full fine-tuning, SMT's warm-up_mode=full), and this method trains "
                "part of the model from the start: set optim.offload=false")
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []  # {"from_step": s, "engine": ...} each time the engine changes
        self._handles: list[RemovableHandle] = []
        self._offloaded: list[nn.Parameter] = []  # the weights whose masters live in CPU memory now

    def applies(self, model: nn.Module) -> bool:
        """Whether the phase now running is offloaded."""
        return self.enabled and trains_every_parameter(model)

    def wrap(self, optimizer: torch.optim.Optimizer, model: nn.Module, step: int) -> torch.optim.Optimizer:
        """``optimizer`` as built for the device, or, in an offloaded phase, the same optimizer class and
        hyper-parameters over fp32 CPU masters of its parameters (the hooks of an earlier phase are removed)."""
        for h in self._handles:
            h.remove()
        for p in self._offloaded:
            delattr(p, _MASTER)
        self._handles, self._offloaded = [], []
        offloaded = self.applies(model)
        engine = OFFLOAD_ENGINE if offloaded else DEVICE_ENGINE
        if not self.history or self.history[-1]["engine"] != engine:
            self.history.append({"from_step": step, "engine": engine})
        if not offloaded:
            return optimizer
        pin = torch.cuda.is_available()
        pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        groups = []
        for group in optimizer.param_groups:
            masters = []
            for p in group["params"]:
                master = p.detach().to("cpu", torch.float32, copy=True)
                masters.append(master.pin_memory() if pin else master)
                pairs.append((p, masters[-1]))
                setattr(p, _MASTER, masters[-1])
                self._offloaded.append(p)
            groups.append({**group, "params": masters})
        host = type(optimizer)(groups, lr=optimizer.defaults["lr"])  # the run's lr: what the scheduler reads
        self._handles = [p.register_post_accumulate_grad_hook(_to_master(m)) for p, m in pairs]
        self._handles += [host.register_step_pre_hook(_state_to_host),
                          host.register_step_post_hook(lambda *_: _masters_to_weights(pairs)),
                          host.register_state_dict_post_hook(_save_masters),
                          host.register_load_state_dict_pre_hook(_load_masters)]
        return host


def _to_master(master: torch.Tensor) -> Any:
    """The hook run after ``param``'s gradient is accumulated: add it to the master's fp32 gradient and free it.
    The copy leaves the device in the gradient's dtype and is widened on the CPU (a cross-device ``.to(fp32)``
    would first make an fp32 copy on the device)."""

    def hook(param: torch.Tensor) -> None:
        grad = param.grad.to(master.device).float()
        if master.grad is None:
            master.grad = grad
        else:
            master.grad.add_(grad)
        param.grad = None

    return hook


@torch.no_grad()
def _masters_to_weights(pairs: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """After a step: each weight = its master rounded to the weight's dtype (cast on the CPU, then copied)."""
    for p, master in pairs:
        p.copy_(master.to(p.dtype))


def _state_to_host(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Lightning moves a restored optimizer's state to the training device (``_optimizer_to_device``); the
    offloaded state lives beside its masters."""
    for master, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step" and value.device != master.device:
                state[key] = value.to(master.device)


def _save_masters(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict[MASTERS] = [m.detach().clone() for g in optimizer.param_groups for m in g["params"]]
    return state_dict


def _load_masters(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    saved = state_dict.pop(MASTERS, None)
    masters = [m for g in optimizer.param_groups for m in g["params"]]
    require(saved is not None and len(saved) == len(masters), "the checkpoint's optimizer holds no fp32 masters of "
            "an offloaded phase (it was trained with optim.offload=false): resume with the setting it was trained "
            "with")
    with torch.no_grad():
        for m, value in zip(masters, saved, strict=True):
            m.copy_(value)
    return state_dict
