"""VTAB-1k (Zhai et al., 2019, arXiv 1910.04867): 19 image-classification tasks in 3 groups, 1,000 training images each.

Data layout: the prepared copy that NOAH/SPT's ``data/vtab-source/get_vtab1k.py`` writes and SSF's
archive ships, one folder per task under ``data_root``::

    <data_root>/<folder>/train800.txt  val200.txt  train800val200.txt  test.txt  images/...

each list holding ``<image path relative to the task folder> <label>`` per line. Splits follow the
protocol: hyper-parameter search trains on ``train800`` and selects on ``val200``; the FINAL run (our
default) trains on all 1,000 images (``train800val200``) and reports top-1 on the full ``test`` list.
``validation`` is only monitored during training (the default callbacks select no checkpoint: the
last epoch's model is tested), so in the final setting it is ``val200``, a subset of the training data.
Group means and the two averaging conventions of the papers are computed in :mod:`.report`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from peftlab.config_utils import require
from peftlab.errors import DataUnavailableError
from peftlab.tasks import TASKS
from peftlab.tasks.vision.image_task import SUBSETS, ImageClassificationTask, ImageClsConfig, Item

log = logging.getLogger(__name__)

GROUPS = ("natural", "specialized", "structured")


@dataclass(frozen=True)
class VtabTaskInfo:
    """One VTAB-1k task: its folder in the prepared layout, group, #classes and full test-set size."""

    folder: str
    title: str
    group: str
    num_classes: int
    test_size: int


# Folders as NOAH/SPT/SSF name them; #classes and test sizes: google-research/task_adaptation's
# split definitions (as forked in NOAH/SPT data/vtab-source/).
VTAB_TASKS: dict[str, VtabTaskInfo] = {t.folder: t for t in (
    VtabTaskInfo("cifar", "CIFAR-100", "natural", 100, 10_000),
    VtabTaskInfo("caltech101", "Caltech101", "natural", 102, 6_084),
    VtabTaskInfo("dtd", "DTD", "natural", 47, 1_880),
    VtabTaskInfo("oxford_flowers102", "Flowers102", "natural", 102, 6_149),
    VtabTaskInfo("oxford_iiit_pet", "Pets", "natural", 37, 3_669),
    VtabTaskInfo("svhn", "SVHN", "natural", 10, 26_032),
    VtabTaskInfo("sun397", "Sun397", "natural", 397, 21_750),
    VtabTaskInfo("patch_camelyon", "Patch Camelyon", "specialized", 2, 32_768),
    VtabTaskInfo("eurosat", "EuroSAT", "specialized", 10, 5_400),
    VtabTaskInfo("resisc45", "Resisc45", "specialized", 45, 6_300),
    VtabTaskInfo("diabetic_retinopathy", "Retinopathy", "specialized", 5, 42_670),
    VtabTaskInfo("clevr_count", "Clevr-Count", "structured", 8, 15_000),
    VtabTaskInfo("clevr_dist", "Clevr-Dist", "structured", 6, 15_000),
    VtabTaskInfo("dmlab", "DMLab", "structured", 6, 22_735),
    VtabTaskInfo("kitti", "KITTI-Dist", "structured", 4, 711),
    VtabTaskInfo("dsprites_loc", "dSpr-Loc", "structured", 16, 73_728),
    VtabTaskInfo("dsprites_ori", "dSpr-Ori", "structured", 16, 73_728),
    VtabTaskInfo("smallnorb_azi", "sNORB-Azim", "structured", 18, 12_150),
    VtabTaskInfo("smallnorb_ele", "sNORB-Elev", "structured", 9, 12_150),
)}

PREPARE_HINT = (
    "Prepare VTAB-1k once (see docs/vtab.md): run get_vtab1k.py from NOAH or SPT (data/vtab-source; needs "
    "tensorflow-datasets and the manual Sun397/Retinopathy downloads) or unpack SSF's extracted vtab-1k archive, "
    "then point task.data_root (or the PEFTLAB_VTAB_ROOT variable) to the folder holding cifar/, caltech101/, ..."
)


def read_list_file(path: Path) -> list[tuple[str, int]]:
    """``path`` (lines ``<relative image path> <label>``) → ``[(relative path, label)]``; blank lines skipped.

    The label is the last whitespace-separated field, so image paths may contain spaces.
    """
    entries: list[tuple[str, int]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataUnavailableError(f"{path}:{lineno}: expected '<image path> <integer label>', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    return entries


@dataclass
class VtabConfig(ImageClsConfig):
    folder: str = "cifar"  # task folder under data_root (a key of VTAB_TASKS)
    data_root: str = "data/vtab-1k"  # folder holding one sub-folder per task

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.folder in VTAB_TASKS, f"task.folder '{self.folder}' is not a VTAB-1k task; "
                f"valid: {sorted(VTAB_TASKS)}")
        expected = VTAB_TASKS[self.folder].num_classes
        require(self.num_classes == expected,
                f"task.num_classes for VTAB '{self.folder}' must be {expected}, got {self.num_classes}")

    @property
    def info(self) -> VtabTaskInfo:
        return VTAB_TASKS[self.folder]


@TASKS.register("vtab")
class VtabTask(ImageClassificationTask):
    config_cls = VtabConfig

    @property
    def task_dir(self) -> Path:
        return Path(self.config.data_root).expanduser() / self.config.folder

    def load_items(self, split: str, seed: int) -> list[Item]:
        list_name = self.config.splits[split]
        path = self.task_dir / f"{list_name}.txt"
        if not path.is_file():
            raise DataUnavailableError(
                f"VTAB-1k task '{self.config.folder}': list file {path} not found "
                f"(expected {', '.join(f'{n}.txt' for n in SUBSETS)} and the images they list). {PREPARE_HINT}"
            )
        entries = read_list_file(path)
        missing = [rel for rel, _ in entries if not (self.task_dir / rel).is_file()]
        if missing:
            raise DataUnavailableError(
                f"VTAB-1k task '{self.config.folder}': {len(missing)} image(s) listed in {path} are missing, "
                f"e.g. {self.task_dir / missing[0]}. {PREPARE_HINT}"
            )
        self._check_size(list_name, len(entries))
        return [(self.task_dir / rel, label) for rel, label in entries]

    def _check_size(self, list_name: str, n: int) -> None:
        """Warn when a list's size differs from the protocol (a partial or differently generated copy)."""
        expected = {"train800": 800, "val200": 200, "train800val200": 1000, "test": self.config.info.test_size}
        if n != expected[list_name]:
            log.warning("VTAB-1k '%s' %s.txt has %d entries; the standard VTAB-1k split has %d: results will not be "
                        "comparable to published numbers", self.config.folder, list_name, n, expected[list_name])
