"""The pieces of multi-process training that do not need several processes: data sharding (the same global batches
as one process), evaluation reassembly (one process's batch order, padding dropped), the cross-process check,
the strategy checks, and the DDP wrapper following the trainable set (a one-process gloo group)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from peftlab import distributed
from peftlab.data import EpochShuffleSampler, EvalShardSampler
from peftlab.errors import ConfigError


@pytest.mark.parametrize(("size", "world", "batch"), [(64, 2, 8), (37, 2, 8), (50, 4, 4), (5, 4, 2)])
def test_training_shards_are_the_global_batches_of_one_process(size: int, world: int, batch: int) -> None:
    shards = [list(EpochShuffleSampler(size, seed=7, rank=r, world=world, batch_size=batch)) for r in range(world)]
    one = EpochShuffleSampler(size, seed=7).order(0)
    assert {len(s) for s in shards} == {len(EpochShuffleSampler(size, 7, 0, world, batch))}  # same step count
    for g in range(size // (world * batch)):  # every full global batch: process r holds micro-batch r
        assert sum((s[g * batch:(g + 1) * batch] for s in shards), []) == one[g * world * batch:(g + 1) * world * batch]
    assert set().union(*map(set, shards)) == set(range(size))  # the partial last batch too (padded, not lost)


def test_a_resumed_shard_skips_its_own_trained_examples() -> None:
    sampler = EpochShuffleSampler(64, seed=1, rank=1, world=2, batch_size=8)
    whole = list(sampler)
    sampler.resume_at(0, 16)
    assert list(sampler) == whole[16:]


@pytest.mark.parametrize(("size", "batch", "world"), [(37, 8, 2), (40, 8, 4), (8, 8, 3), (3, 1, 2)])
def test_evaluation_shards_reassemble_in_one_process_order(monkeypatch, size: int, batch: int, world: int) -> None:
    samplers = [EvalShardSampler(size, batch, r, world) for r in range(world)]
    assert len({len(s) for s in samplers}) == 1  # every process runs as many batches (collectives stay paired)
    outputs = [list(s) for s in samplers]  # a batch's "output": its indices
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: [o[:len(obj)] for o in outputs])
    gathered = distributed.gather_batches(outputs[0], samplers[0].num_batches)
    assert gathered == list(EvalShardSampler(size, batch))  # one process's batches, in order, padding dropped
    assert distributed.gather_batches(outputs[0][:1], samplers[0].num_batches) == gathered[:world]  # a short loop


def test_assert_same_fails_on_every_process_when_a_decision_differs(monkeypatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    decision = {"layer.0": torch.tensor([3, 1, 2])}
    monkeypatch.setattr(distributed, "all_gather_objects", lambda d: [d, d])
    distributed.assert_same("the blocks", decision)
    other = distributed.digest({"layer.0": torch.tensor([3, 1, 4])})
    monkeypatch.setattr(distributed, "all_gather_objects", lambda d: [d, other])
    with pytest.raises(RuntimeError, match="the blocks differs between processes"):
        distributed.assert_same("the blocks", decision)


def test_digest_sees_values_dtype_and_structure() -> None:
    a = {"x": torch.arange(4), "y": [1, 2]}
    assert distributed.digest(a) == distributed.digest({"y": [1, 2], "x": torch.arange(4)})
    assert distributed.digest(a) != distributed.digest({"x": torch.arange(4).int(), "y": [1, 2]})
    assert distributed.digest(a) != distributed.digest({"x": torch.arange(4), "y": [2, 1]})


@pytest.mark.parametrize(("strategy", "method", "changes", "message"), [
    ("ddp_spawn", "lora", False, "use trainer.strategy=ddp"),
    ("fsdp", "smt", True, "method=smt changes its trainable tensors"),
    ({"_target_": "pytorch_lightning.strategies.FSDPStrategy"}, "lisa", True, "use trainer=ddp"),
    ("deepspeed_stage_2", "lora", False, "DeepSpeed is not supported"),
])
def test_strategies_that_cannot_work_fail_up_front(strategy, method: str, changes: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        distributed.check_strategy(strategy, method, changes)


def test_lightning_ddp_by_name_or_target_becomes_the_method_aware_strategy() -> None:
    for value in ("ddp", "ddp_find_unused_parameters_true",
                  {"_target_": "pytorch_lightning.strategies.DDPStrategy", "find_unused_parameters": True}):
        distributed.check_strategy(value, "smt", True)
        assert isinstance(distributed.build_strategy(value), distributed.MethodDDPStrategy)
    assert distributed.build_strategy("ddp_find_unused_parameters_true")._ddp_kwargs == {"find_unused_parameters": True}
    assert distributed.build_strategy("auto") == "auto"


class Probed(nn.Module):
    """A LightningModule stand-in: ``a`` trains, ``b`` is probed (requires grad, not averaged)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)
        self.probed = {"b.weight", "b.bias"}

    def ddp_ignored_parameters(self) -> set[str]:
        return self.probed


@pytest.fixture
def one_process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_ddp_wrapper_follows_the_trainable_set(one_process_group) -> None:
    strategy = distributed.MethodDDPStrategy(parallel_devices=[torch.device("cpu")])
    module = Probed()
    strategy.connect(module)  # type: ignore[arg-type]
    strategy.configure_ddp()
    assert isinstance(strategy.model, DistributedDataParallel)
    reduced = {id(p) for p in strategy.model._module_parameters if p.requires_grad}
    assert reduced == {id(p) for p in module.a.parameters()}  # the probed tensors are left out

    module.a.requires_grad_(False)  # e.g. SPT's sensitivity phase: nothing but probed tensors
    strategy.rewrap()
    assert strategy.model is module  # no DDP around a module with nothing to average

    module.probed = set()  # e.g. after a switch: b trains
    strategy.rewrap()
    trained = {id(p) for p in strategy.model._module_parameters if p.requires_grad}
    assert trained == {id(p) for p in module.b.parameters()}


def test_a_local_multirun_cannot_start_processes_per_point(monkeypatch) -> None:
    """Lightning's launcher re-runs the command line in each new process: inside ``-m`` that is the whole sweep."""
    from types import SimpleNamespace

    import pytorch_lightning as pl
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=distributed.build_strategy("ddp"), logger=False)
    assert distributed.launch_position(trainer) == (0, 2)
    distributed.check_launch(trainer)  # a single run: fine
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.MULTIRUN)))
    with pytest.raises(ConfigError, match="a multirun"):
        distributed.check_launch(trainer)
