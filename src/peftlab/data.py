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
"""

from __future__ import annotations

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
    ``skip`` indices in (the examples a killed run had already trained on)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
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
        yield from self.order(self.epoch)[skip:]

    def __len__(self) -> int:
        return self.size  # the full epoch: Lightning counts the skipped batches as done already


class ResumableLoader(DataLoader):
    """The training DataLoader; its state (epoch, batches trained in it) goes into Lightning checkpoints.

    ``batches_done`` is read from the trainer (the batches whose optimizer step finished when the checkpoint
    was taken), not counted here, because Lightning may fetch ahead of training."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, EpochShuffleSampler):  # e.g. wrapped by a distributed strategy: epoch-level only
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

    def train_dataloader(self) -> DataLoader:
        args = self._loader_args("train")
        sampler = EpochShuffleSampler(len(args["dataset"]), self.seed)
        self._train_loader = ResumableLoader(**args, sampler=sampler, batches_done=self._batches_done)
        self._train_loader.load_state_dict(self._resume)
        return self._train_loader

    def val_dataloader(self) -> DataLoader:
        return DataLoader(**self._loader_args("validation"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(**self._loader_args("test"), shuffle=False)
