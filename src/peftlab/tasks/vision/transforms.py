"""The image pipeline of the VTAB-1k protocol: direct resize to the backbone's input size, no augmentation.

NOAH/SPT/SSF train and test with ``--direct_resize --no_aug``: ``Resize((224, 224), bicubic)`` (then a
no-op ``CenterCrop(224)``), ``ToTensor``, ``Normalize`` (NOAH lib/datasets.py). Train and eval images
therefore go through the same transform. Size, interpolation and normalisation come from the
backbone's timm data config (``timm.data.resolve_model_data_config``) unless overridden: the original
ViT-B/16 IN-21k weights (``vit_base_patch16_224.orig_in21k``) expect mean = std = 0.5 (the
"inception" normalisation); NOAH's LoRA scripts used ImageNet mean/std instead, hence the override.
We depart from timm's own eval transform on purpose: timm resizes to ``size / crop_pct`` and
centre-crops, which the VTAB protocol does not do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchvision import transforms as T

from peftlab.config_utils import require

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "backbone": None,  # the mean/std of the backbone's pretrained config
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def image_transform(
    data_config: Mapping[str, Any],
    image_size: int | None = None,
    normalization: str = "backbone",
    interpolation: str | None = None,
) -> T.Compose:
    """PIL image → normalised ``(3, S, S)`` float tensor; ``S`` = ``image_size`` or the backbone's input size.

    ``data_config`` is timm's resolved data config (``input_size``, ``interpolation``, ``mean``, ``std``).
    """
    require(normalization in NORMALIZATIONS,
            f"task.normalization must be one of {sorted(NORMALIZATIONS)}, got '{normalization}'")
    size = image_size or int(data_config["input_size"][-1])
    mode = interpolation or str(data_config.get("interpolation", "bicubic"))
    require(mode in INTERPOLATIONS, f"interpolation must be one of {sorted(INTERPOLATIONS)}, got '{mode}'")
    stats = NORMALIZATIONS[normalization]
    mean, std = stats if stats is not None else (tuple(data_config["mean"]), tuple(data_config["std"]))
    return T.Compose([
        T.Resize((size, size), interpolation=INTERPOLATIONS[mode]),  # direct resize: no crop, aspect not kept
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
