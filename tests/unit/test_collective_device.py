"""Collectives take tensors where the process group reduces: under NCCL (GPU memory only) a CPU tensor is refused
with advice, before NCCL's own "No backend type associated with device type cpu"."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from peftlab import distributed


def test_a_cpu_tensor_under_nccl_is_refused_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    reduced: list[torch.Tensor] = []
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: reduced.append(tensor))
    with pytest.raises(RuntimeError, match="reduces GPU memory only: reduce the gradient on its device"):
        distributed.all_reduce_mean_(torch.zeros(3))
    assert not reduced
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    distributed.all_reduce_mean_(torch.ones(3))  # gloo reduces CPU memory
    assert len(reduced) == 1
