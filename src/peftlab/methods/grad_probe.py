"""Summing gradients over backward passes, for methods that choose what to train from gradients.

SMT (arXiv 2405.15525) sums the signed gradient of each eligible matrix over its warm-up; SPT (arXiv
2303.08566, official ``engine.py`` ``get_sensitivity``) sums the squared gradient of every parameter over
16 batches. Both are :func:`sum_gradients` with a different ``transform``. Sums are fp32 whatever the
parameter dtype, so a bf16 model does not lose small contributions.
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


def sum_gradients(params: dict[str, torch.Tensor], sums: dict[str, torch.Tensor], *, free: bool,
                  transform: Callable[[torch.Tensor], torch.Tensor] = _identity,
                  offload: Callable[[torch.device], bool] | None = None,
                  reduce: bool = False) -> list[RemovableHandle]:
    """Add ``transform(grad)`` of each named parameter to ``sums[name]`` (fp32, created on first use) at every
    backward pass; returns the hook handles (``.remove()`` them when done).

    ``offload(grad.device)`` true: the sums live on the CPU (each gradient is copied there and added, as the
    official SMT code's ``grad.detach().cpu()``); otherwise beside the gradient. A sum restored on another device
    (a resumed run) moves there at its first addition.

    ``free=True``: the hook runs after the gradient is accumulated and then drops it (``param.grad = None``),
    so the probed parameters need ``requires_grad`` but never hold a gradient and are never updated, and
    their gradient memory is freed layer by layer during backward. ``free=False``: the gradient is read as it
    flows and left for the optimizer (SMT's full fine-tuning warm-up).

    Several processes: the hooks see this process's gradient. ``reduce=True`` averages each gradient over the
    processes before ``transform`` (one all-reduce per tensor per backward, inside backward), so a non-linear
    transform (SPT's grad²) sees the gradient of the global batch; with ``reduce=False`` the sums are local and
    the caller averages them once (exact for the identity: SMT, at its switch).
    """

    def accumulate(name: str, grad: torch.Tensor) -> None:
        value = transform(distributed.mean(grad.detach()) if reduce else grad.detach())
        where = torch.device("cpu") if offload is not None and offload(value.device) else value.device
        total = sums.get(name)
        if total is None:
            total = sums[name] = torch.zeros(value.shape, dtype=torch.float32, device=where)
        elif total.device != where:
            total = sums[name] = total.to(where)
        total.add_(value.to(where))

    def read(name: str) -> Callable[[torch.Tensor], None]:
        return lambda grad: accumulate(name, grad)

    def read_and_free(name: str) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            accumulate(name, param.grad)
            param.grad = None

        return hook

    if free:
        return [p.register_post_accumulate_grad_hook(read_and_free(n)) for n, p in params.items()]
    return [p.register_hook(read(n)) for n, p in params.items()]
