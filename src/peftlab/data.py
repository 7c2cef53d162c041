"""A LightningDataModule over any :class:`~peftlab.tasks.base.Task`, with a data order that resumes exactly.

The training order is a permutation drawn from ``(seed, epoch)`` only (:class:`EpochShuffleSampler`), never
from the global RNG, so a run resumed from a checkpoint sees the same batches as an uninterrupted one. The
checkpoint records the epoch and how many batches of it were trained, and a resumed run skips exactly those.
The state travels through the DataModule's ``state_dict``/``load_state_dict`` (restored before the optimizer is
built). Lightning's own route for stateful loaders (``fit_loop`` "combined_loader") does not work here: our
``configure_optimizers`` reads ``trainer.estimated_stepping_batches``, which builds the train loader before
Lightning has read the loop state, so Lightning never hands that state to the loader. The loader still
exposes the same state (it is "resumable" to Lightning, which then does not warn). Every loader has its own
generator, so creating an iterator never draws from the global torch RNG (dropout's stream stays the
uninterrupted one).

Several processes (docs/multi_gpu.md): Lightning's distributed samplers are off (``use_distributed_sampler:
false`` in ``conf/trainer/cpu.yaml``) and the samplers here shard themselves by the trainer's rank and world size.
Training: global batch ``i`` is positions ``[i·W·B, (i+1)·W·B)`` of the epoch's permutation and process ``r``
takes its ``r``-th block of ``B``, so the processes' ``i``-th batches together are exactly batch ``i`` of one
process with batch ``W·B``, and process ``r``'s batch is micro-batch ``r`` of one process with batch ``B`` and
``accumulate_grad_batches=W``. Evaluation (:class:`EvalShardSampler`): whole batches
of the one-process loop are dealt out round-robin and every process runs the same number of them (padding
repeats); :func:`peftlab.distributed.gather_batches` reassembles the outputs in one-process order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from peftlab.tasks.base import Task


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(size)`` that depends on ``(seed, epoch)`` only; Lightning calls
    :meth:`set_epoch` before every epoch. After :meth:`resume_at` the next pass of that epoch starts
    ``skip`` indices in (the examples a killed run had already trained on).

    With ``world > 1`` this process yields its block of ``batch_size`` positions of every global batch of
    ``world · batch_size`` (:meth:`shard`); ``skip`` counts this process's indices."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, batch_size: int = 1) -> None:
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.batch_size = batch_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, indices to skip once)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, skip: int) -> None:
        self.epoch = epoch
        self._resume = (epoch, skip)

    def order(self, epoch: int) -> list[int]:
        """The full permutation of ``epoch``."""
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()

    def __iter__(self) -> Iterator[int]:  # a generator: runs at the first next(), after set_epoch
        skip = 0
        if self._resume is not None:
            resume_epoch, resume_skip = self._resume
            skip = resume_skip if resume_epoch == self.epoch else 0
            self._resume = None
        order = self.order(self.epoch)
        yield from (self.shard(order) if self.world > 1 else order)[skip:]

    def shard(self, order: list[int]) -> list[int]:
        """This process's positions: block ``rank`` of ``batch_size`` of every global batch. The last global
        batch, when partial, is padded with the epoch's first positions until ``world`` divides it (as torch's
        ``DistributedSampler`` pads) and split in ``world`` equal blocks."""
        step = self.world * self.batch_size
        mine: list[int] = []
        for start in range(0, self.size, step):
            chunk = order[start : start + step]
            per = math.ceil(len(chunk) / self.world)
            chunk += (order * self.world)[: per * self.world - len(chunk)]
            mine += chunk[self.rank * per : (self.rank + 1) * per]
        return mine

    def __len__(self) -> int:  # the full epoch: Lightning counts skipped batches as done
        full, rest = divmod(self.size, self.world * self.batch_size)
        return full * self.batch_size + math.ceil(rest / self.world)


class EvalShardSampler(Sampler[list[int]]):
    """Batch sampler over ``range(size)`` in order: the batches of size ``batch_size`` one process would run;
    process ``rank`` of ``world`` runs batches ``rank, rank + world, ...``, all processes the same number
    (``ceil(num_batches / world)``; the missing ones repeat the first batches and are dropped when gathered)."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size
        self.rank = rank
        self.world = world
        self.num_batches = math.ceil(size / batch_size)  # of the whole set, i.e. of one process

    def __iter__(self) -> Iterator[list[int]]:
        for j in range(self.rank, len(self) * self.world, self.world):
            start = (j % self.num_batches) * self.batch_size
            yield list(range(start, min(start + self.batch_size, self.size)))

    def __len__(self) -> int:
        return math.ceil(self.num_batches / self.world)


class ResumableLoader(DataLoader):
    """The training DataLoader; its state (epoch, batches trained in it) goes into Lightning checkpoints.

    ``batches_done`` is read from the trainer (the batches whose optimizer step finished when the checkpoint
    was taken), not counted here, because Lightning may fetch ahead of training."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, EpochShuffleSampler):  # never: Lightning's distributed samplers are off
            return {}
        return {"epoch": sampler.epoch, "batches_done": self._batches_done(), "batch_size": int(self.batch_size or 1),
                "seed": sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if state and isinstance(sampler, EpochShuffleSampler):
            sampler.resume_at(int(state["epoch"]), int(state["batches_done"]) * int(state["batch_size"]))


class TaskDataModule(pl.LightningDataModule):
    def __init__(self, task: Task, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.task = task
        self.num_workers = num_workers
        self.seed = seed
        self._train_loader: ResumableLoader | None = None
        self._resume: dict[str, int] = {}  # train-order state from a checkpoint, applied to the next train loader

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"train_order": self._train_loader.state_dict() if self._train_loader is not None else {}}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        self._resume = dict(state.get("train_order", {}))

    def _loader_args(self, split: str) -> dict[str, Any]:
        c = self.task.config
        return {
            "dataset": self.task.dataset(split),
            "batch_size": c.batch_size if split == "train" else c.eval_batch_size,
            "collate_fn": self.task.collate,
            "num_workers": self.num_workers,
            "generator": torch.Generator().manual_seed(self.seed),  # worker seeds; keeps the global RNG untouched
        }

    def _batches_done(self) -> int:
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed) if self.trainer else 0

    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of this process: the trainer's, (0, 1) without a trainer."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        args = self._loader_args("train")
        sampler = EpochShuffleSampler(len(args["dataset"]), self.seed, *self._shard(), batch_size=args["batch_size"])
        self._train_loader = ResumableLoader(**args, sampler=sampler, batches_done=self._batches_done)
        self._train_loader.load_state_dict(self._resume)
        return self._train_loader

    def _eval_loader(self, split: str) -> DataLoader:
        args = self._loader_args(split)
        batch_size = args.pop("batch_size")
        return DataLoader(**args, batch_sampler=EvalShardSampler(len(args["dataset"]), batch_size, *self._shard()))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
