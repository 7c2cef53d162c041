"""Reading gradients during training, for methods that choose what to train from gradients.

SMT (arXiv 2405.15525) sums the signed gradient of each eligible matrix over its warm-up; SPT (arXiv
2303.08566, official ``engine.py`` ``get_sensitivity``) sums the squared gradient of every candidate over
16 batches. Both are a :class:`GradientSums` with a different ``transform``; SpIEL (arXiv 2401.16405) sums the
gradients of its candidates with its own bookkeeping and the same :class:`StepGate`. Sums are fp32 whatever the
parameter dtype, so a bf16 model does not lose small contributions.

Two places to read a gradient:

- in backward (:meth:`GradientSums.hooks`), for tensors the optimizer never sees (SMT's ``grad_only`` warm-up,
  SPT's sensitivity pass: each gradient is read and freed at once). Several processes: each gradient is averaged
  over them there, on the device it was computed on, so every process holds the sums of the global batch and no
  collective ever runs on the sums themselves (which may live in CPU memory, where NCCL cannot reduce);
- at the optimizer step, from ``.grad`` (:meth:`GradientSums.add`, SMT's full warm-up): DDP has averaged it over
  the processes, the loss scaler has unscaled it, and whether the step is skipped is known.

fp16 loss scaling (``trainer.precision=16-mixed``: torch's GradScaler): every backward pass computes the gradient
of s·L (s: the loss scale, 65536 at first), and a step whose gradients hold inf/NaN is skipped (no update; s is
halved), as HF Trainer, which the released SMT/CapaBoost/AdaLoRA scripts use, does through the same GradScaler.
A reader in backward therefore divides by s (:class:`StepGate`) and holds what it read during a step apart until
the step's outcome is known: added when the step is taken, dropped when it is skipped, as if the step's batches
had not been seen. Under loss scaling the held reads cost a second buffer as large as the sums (SMT ``grad_only``,
SPT; SpIEL's is k per matrix); without it (bf16, fp32) reads go straight into the sums. An inf/NaN among the
gradients read in backward skips the step like one among the trained tensors' (see ``peftlab.loss_scaling``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle

from peftlab import distributed


def _identity(grad: torch.Tensor) -> torch.Tensor:
    return grad


def squared(grad: torch.Tensor) -> torch.Tensor:
    """SPT's first-order Taylor sensitivity term: grad²."""
    return grad.float().pow(2)


class StepGate:
    """The loss scale of the backward passes of the current optimizer step, for readers that read in backward.

    ``loss_scale`` is None without loss scaling: reads are final. Under loss scaling :meth:`read` returns the
    unscaled gradient and notes whether it was finite; ``held`` tells the reader to keep the step's reads apart
    until the module reports the step's outcome (:meth:`overflow` is part of that decision)."""

    def __init__(self) -> None:
        self.loss_scale: float | None = None
        self._found_inf: torch.Tensor | None = None  # on the device, summed without a sync until overflow()

    @property
    def held(self) -> bool:
        return self.loss_scale is not None

    def start(self, loss_scale: float | None) -> None:
        """Before a backward pass: the factor its gradients carry (None: no loss scaling)."""
        self.loss_scale = loss_scale

    def read(self, grad: torch.Tensor) -> torch.Tensor:
        """The fp32 gradient of the unscaled loss (scales are powers of two: dividing is exact)."""
        value = grad.float()
        if self.loss_scale is None:
            return value
        value = value * (1.0 / self.loss_scale)
        bad = (~torch.isfinite(value)).any()
        self._found_inf = bad if self._found_inf is None else self._found_inf | bad
        return value

    def overflow(self) -> bool:
        """Whether a gradient read since the last call held inf/NaN (resets)."""
        found, self._found_inf = self._found_inf, None
        return bool(found) if found is not None else False


class GradientSums:
    """fp32 sums of ``transform(grad)`` per parameter name, over the optimizer steps that were taken.

    ``offload(device)`` true: the sums of gradients computed on ``device`` live in CPU memory (each gradient is
    copied there and added, as the official SMT code's ``grad.detach().cpu()``); otherwise beside the gradient. A sum
    restored on another device (a resumed run) moves there at its first addition."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor] = _identity,
                 offload: Callable[[torch.device], bool] | None = None) -> None:
        self.transform = transform
        self.offload = offload
        self.totals: dict[str, torch.Tensor] = {}
        self.gate = StepGate()
        self._step: dict[str, torch.Tensor] = {}  # this step's reads while the gate holds them
        self._touched: set[str] = set()  # names read in this step (the buffers are kept and zeroed between steps)

    @staticmethod
    def _zeros(shape: torch.Size, device: torch.device) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=device)

    def _accumulate(self, sums: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
        where = torch.device("cpu") if self.offload is not None and self.offload(value.device) else value.device
        total = sums.get(name)
        if total is None:
            total = sums[name] = self._zeros(value.shape, where)
        elif total.device != where:
            total = sums[name] = total.to(where)
        total.add_(value.to(where))

    def add(self, name: str, grad: torch.Tensor) -> None:
        """Add a final gradient (unscaled, averaged over processes: ``.grad`` at the optimizer step)."""
        self._accumulate(self.totals, name, self.transform(grad.detach().float()))

    def _read(self, name: str, grad: torch.Tensor, reduce: bool) -> None:
        value = self.transform(self.gate.read(distributed.mean(grad.detach()) if reduce else grad.detach()))
        if not self.gate.held:
            self._accumulate(self.totals, name, value)
            return
        if name not in self._touched and name in self._step:
            self._step[name].zero_()
        self._touched.add(name)
        self._accumulate(self._step, name, value)

    def end_step(self, skipped: bool) -> None:
        """The outcome of the optimizer step whose backward passes were read: held reads added, or dropped."""
        if not skipped:
            for name in sorted(self._touched):
                self._accumulate(self.totals, name, self._step[name])
        self._touched.clear()

    def clear(self) -> None:
        """Drop every sum and buffer (after the switch, or before loading saved sums)."""
        self.totals.clear()
        self._step.clear()
        self._touched.clear()

    def hooks(self, params: dict[str, torch.Tensor], *, reduce: bool = False) -> list[RemovableHandle]:
        """Read the gradient of each named parameter at every backward pass and free it; returns the hook handles
        (``.remove()`` them when done).

        Each hook runs after the gradient is accumulated and then drops it (``param.grad = None``), so the probed
        parameters need ``requires_grad`` but never hold a gradient and are never updated, and their gradient memory
        is freed layer by layer during backward.

        ``reduce=True`` averages each gradient over the processes before ``transform`` (one all-reduce per tensor
        per backward, on the gradient's device), so a non-linear transform (SPT's grad²) sees the gradient of the
        global batch and the sums are the same on every process."""

        def read_and_free(name: str) -> Callable[[torch.Tensor], None]:
            def hook(param: torch.Tensor) -> None:
                self._read(name, param.grad, reduce)
                param.grad = None

            return hook

        return [p.register_post_accumulate_grad_hook(read_and_free(n)) for n, p in params.items()]

    def nbytes(self) -> dict[str, int]:
        """Bytes of the sums (and held buffers) per device type."""
        out: dict[str, int] = {}
        for t in [*self.totals.values(), *self._step.values()]:
            out[t.device.type] = out.get(t.device.type, 0) + t.numel() * t.element_size()
        return out


class ReadsGradients:
    """Method mixin: the loss-scaling hooks of a method whose readers share one :class:`StepGate` (``self.gate``).
    The method still implements ``on_before_optimizer_step`` (what to do with the step's reads)."""

    gate: StepGate

    def on_before_backward(self, loss_scale: float | None) -> None:
        self.gate.start(loss_scale)

    def gradient_overflow(self) -> bool:
        return self.gate.overflow()
