"""``digits``: scikit-learn's handwritten digits (1,797 real 8×8 grey images, 10 classes) in the VTAB-1k shape.

Not a benchmark: the offline stand-in for VTAB-1k, running the same image-classification path (PIL image →
direct resize → normalise → timm ViT). The split mirrors VTAB-1k: ``train800`` / ``val200`` / ``test``
(the remaining 797), drawn once, stratified, with ``data_seed`` (not the training seed), so every run
of a sweep sees the same images; the final protocol trains on train800 + val200 = 1,000 images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from peftlab.config_utils import Range, Seed, require
from peftlab.tasks import TASKS
from peftlab.tasks.vision.image_task import ImageClassificationTask, ImageClsConfig, Item


def digit_splits(data_seed: int) -> dict[str, list[tuple[Image.Image, int]]]:
    """The four VTAB-shaped subsets of the digits, as ``(8×8 greyscale PIL image, label)`` pairs."""
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels → 0..255
    index = np.arange(len(pixels))
    train_val, test = train_test_split(index, train_size=1000, stratify=digits.target, random_state=data_seed)
    train, val = train_test_split(train_val, train_size=800, stratify=digits.target[train_val],
                                  random_state=data_seed)

    def items(ids: np.ndarray) -> list[tuple[Image.Image, int]]:
        return [(Image.fromarray(pixels[i]), int(digits.target[i])) for i in sorted(ids)]

    return {"train800": items(train), "val200": items(val), "train800val200": items(train_val), "test": items(test)}


@dataclass
class DigitsConfig(ImageClsConfig):
    num_classes: Annotated[int, Range(2)] = 10
    data_seed: Seed = 1234

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_classes == 10, f"task.num_classes for digits must be 10, got {self.num_classes}")


@TASKS.register("digits")
class DigitsTask(ImageClassificationTask):
    config_cls = DigitsConfig

    def load_items(self, split: str, seed: int) -> list[Item]:
        if not hasattr(self, "_subsets"):
            self._subsets = digit_splits(self.config.data_seed)
        return list(self._subsets[self.config.splits[split]])
