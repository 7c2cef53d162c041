"""Image classification, shared by VTAB-1k and the offline ``digits`` task.

A subclass only says where its ``(image, label)`` pairs come from (:meth:`ImageClassificationTask.load_items`);
transform, batching, loss (cross-entropy, no label smoothing: NOAH's ``--smoothing=0``), predictions and
the metric (top-1 accuracy, in percent) are here. The model is a timm classifier: ``model(pixels)``
returns logits. ``setup`` receives the backbone's timm data config (see ``peftlab.train.build``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from peftlab import metrics
from peftlab.config_utils import PositiveInt, Range, require
from peftlab.tasks.base import SPLITS, Task, TaskConfig, cat_outputs
from peftlab.tasks.vision.transforms import INTERPOLATIONS, NORMALIZATIONS, image_transform

ImageSource = str | Path | Image.Image  # a file to open lazily, or an image already in memory
Item = tuple[ImageSource, int]
# VTAB-1k's list names (NOAH data/vtab-source/get_vtab1k.py); every image task here offers the same four subsets
SUBSETS = ("train800", "val200", "train800val200", "test")


@dataclass
class ImageClsConfig(TaskConfig):
    num_classes: Annotated[int, Range(2)] = 2
    main_metric: str = "top1"  # top-1 accuracy in %, the only metric VTAB-1k papers report
    image_size: PositiveInt | None = None  # None: the backbone's input size (224 for ViT-B/16)
    normalization: str = "backbone"  # backbone (its pretrained mean/std) | imagenet | inception
    interpolation: str | None = None  # None: the backbone's (bicubic for ViT)
    # subset feeding each split. Default = VTAB-1k's final protocol: train on all 1,000, report on test.
    # Hyper-parameter search: {train: train800, validation: val200, test: val200}.
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train800val200", "validation": "val200", "test": "test"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(set(self.splits) == set(SPLITS), f"task.splits must map exactly {SPLITS}, got {sorted(self.splits)}")
        bad = sorted(v for v in self.splits.values() if v not in SUBSETS)
        require(not bad, f"task.splits names unknown subset(s) {bad}; valid: {SUBSETS}")
        require(self.main_metric == "top1", f"task.main_metric of image tasks is 'top1', got '{self.main_metric}'")
        require(self.normalization in NORMALIZATIONS,
                f"task.normalization must be one of {sorted(NORMALIZATIONS)}, got '{self.normalization}'")
        require(self.interpolation is None or self.interpolation in INTERPOLATIONS,
                f"task.interpolation must be one of {sorted(INTERPOLATIONS)} or null, got '{self.interpolation}'")


class ImageDataset(Dataset):
    """``(image, label)`` items → ``{"pixel_values": (3, S, S), "labels": int}``; files are opened lazily."""

    def __init__(self, items: Sequence[Item], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, label = self.items[index]
        if isinstance(source, Image.Image):
            image = source.convert("RGB")  # grey digits → 3 identical channels, as the backbone expects
        else:
            with Image.open(source) as img:
                image = img.convert("RGB")
        return {"pixel_values": self.transform(image), "labels": label}


class ImageClassificationTask(Task):
    """Base of the image-classification families; subclasses implement :meth:`load_items`."""

    config_cls = ImageClsConfig

    @property
    def head(self) -> str:
        return "image_cls"

    @property
    def num_labels(self) -> int:
        return self.config.num_classes

    def load_items(self, split: str, seed: int) -> list[Item]:
        """The ``(image, label)`` pairs of ``split`` (one of train, validation, test)."""
        raise NotImplementedError

    def setup(self, preprocessor: Any, seed: int) -> None:
        require(isinstance(preprocessor, Mapping) and "input_size" in preprocessor,
                f"task '{self.name}' needs an image backbone (a timm model config, source: timm); "
                f"got preprocessor {type(preprocessor).__name__}")
        c = self.config
        self.transform = image_transform(preprocessor, c.image_size, c.normalization, c.interpolation)
        self._data: dict[str, ImageDataset] = {}
        for split in SPLITS:
            items = self.load_items(split, seed)
            require(len(items) > 0, f"task '{self.name}' split '{split}' is empty")
            bad = sorted({y for _, y in items if not 0 <= y < c.num_classes})
            require(not bad, f"task '{self.name}' split '{split}' has labels {bad[:5]} outside [0, {c.num_classes})")
            cap = c.max_train_samples if split == "train" else c.max_eval_samples
            if cap is not None and len(items) > cap:
                keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:cap]
                items = [items[i] for i in sorted(keep.tolist())]
            self._data[split] = ImageDataset(items, self.transform)

    def dataset(self, split: str) -> ImageDataset:
        return self._data[split]

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),  # (B, 3, S, S)
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
        }

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(model(batch["pixel_values"]).float(), batch["labels"])

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        logits = model(batch["pixel_values"]).float()  # (B, num_classes)
        return {"preds": logits.argmax(-1).cpu(), "refs": batch["labels"].cpu()}

    def evaluate(self, outputs: list[dict[str, Any]], split: str) -> dict[str, float]:
        return {"top1": metrics.accuracy(cat_outputs(outputs, "preds"), cat_outputs(outputs, "refs"))}
