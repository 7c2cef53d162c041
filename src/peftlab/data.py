"""A LightningDataModule over any :class:`~peftlab.tasks.base.Task`."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from peftlab.tasks.base import Task


class TaskDataModule(pl.LightningDataModule):
    def __init__(self, task: Task, num_workers: int = 0) -> None:
        super().__init__()
        self.task = task
        self.num_workers = num_workers

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        c = self.task.config
        return DataLoader(
            self.task.dataset(split),
            batch_size=c.batch_size if split == "train" else c.eval_batch_size,
            shuffle=shuffle,
            collate_fn=self.task.collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
