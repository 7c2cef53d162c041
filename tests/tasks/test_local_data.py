"""Local copies of a hub data set (GLUE RTE, MNLI) in the layouts a copy for an offline cluster comes in, built
here in a temporary folder with the hub's exact file names and features: the hub repository's files with and
without its README.md, one config's folder, the parquet export, ``save_to_disk``, and the ``HF_HOME`` cache."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from peftlab.errors import DataUnavailableError
from peftlab.tasks import build_task
from peftlab.tasks.hub import load_hf_dataset, split_files
from peftlab.train import run
from tests.conftest import TINY, compose_config

# nyu-mll/glue rte: features and file names as on the hub (rte/train-00000-of-00001.parquet ...)
RTE_FEATURES = datasets.Features({
    "sentence1": datasets.Value("string"),
    "sentence2": datasets.Value("string"),
    "label": datasets.ClassLabel(names=["entailment", "not_entailment"]),
    "idx": datasets.Value("int32"),
})
SPLITS = {"train": 24, "validation": 8, "test": 8}
README = """---
configs:
- config_name: rte
  data_files:
  - split: train
    path: rte/train-*
  - split: validation
    path: rte/validation-*
  - split: test
    path: rte/test-*
---
# GLUE (test copy)
"""


def rte(split: str) -> datasets.Dataset:
    n = SPLITS[split]
    labels = [-1] * n if split == "test" else [i % 2 for i in range(n)]  # GLUE test splits are unlabelled
    return datasets.Dataset.from_dict({
        "sentence1": [f"{split} premise {i}" for i in range(n)], "sentence2": [f"hypothesis {i}" for i in range(n)],
        "label": labels, "idx": list(range(n)),
    }, features=RTE_FEATURES)


def hub_files(root: Path, readme: bool = True) -> Path:
    """The hub repository as `hf download nyu-mll/glue --repo-type dataset --local-dir <root>` leaves it (RTE only)."""
    for split in SPLITS:
        (root / "rte").mkdir(parents=True, exist_ok=True)
        rte(split).to_parquet(root / "rte" / f"{split}-00000-of-00001.parquet")
    if readme:
        (root / "README.md").write_text(README)
    return root


def parquet_export(root: Path) -> Path:
    """The hub's parquet export (refs/convert/parquet): rte/<split>/0000.parquet."""
    for split in SPLITS:
        (root / "rte" / split).mkdir(parents=True)
        rte(split).to_parquet(root / "rte" / split / "0000.parquet")
    return root


def saved(root: Path) -> Path:
    datasets.DatasetDict({s: rte(s) for s in SPLITS}).save_to_disk(str(root))
    return root


# layout → (task.dataset relative to tmp, task.subset)
LAYOUTS = {
    "hub_files": (lambda tmp: hub_files(tmp / "glue"), "glue", "rte"),
    "hub_files_without_readme": (lambda tmp: hub_files(tmp / "glue", readme=False), "glue", "rte"),
    "one_config_folder": (lambda tmp: hub_files(tmp / "glue", readme=False), "glue/rte", "rte"),
    "parquet_export": (lambda tmp: parquet_export(tmp / "export"), "export", "rte"),
    "save_to_disk": (lambda tmp: saved(tmp / "rte_saved"), "rte_saved", "rte"),
    "save_to_disk_per_config": (lambda tmp: saved(tmp / "saved" / "rte"), "saved", "rte"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rte_loads_from_each_local_layout(tmp_path: Path, layout: str) -> None:
    make, dataset, subset = LAYOUTS[layout]
    make(tmp_path)
    task = build_task(compose_config(["task=rte", f"task.dataset={tmp_path / dataset}", f"task.subset={subset}"]).task)
    for split in ("train", "validation"):
        got = task.load_raw(split)
        assert got.to_dict() == rte(split).to_dict()
        assert got.features["label"] == RTE_FEATURES["label"]  # the class names travel with the files


def test_hub_cache_copied_to_an_offline_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HOME copied from a machine that ran load_dataset('nyu-mll/glue', 'rte'): the hub id loads offline."""
    cache = tmp_path / "hf_home" / "datasets"
    datasets.load_dataset(str(hub_files(tmp_path / "glue")), "rte", cache_dir=str(cache))  # fills the cache
    (cache / "glue").rename(cache / "nyu-mll___glue")  # the folder name a download of the hub id gets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    task = build_task(compose_config(["task=rte"]).task)  # task.dataset=nyu-mll/glue, task.subset=rte
    assert task.load_raw("validation").to_dict() == rte("validation").to_dict()


def test_split_names_match_exactly(tmp_path: Path) -> None:
    """MNLI's hub files: validation must not pick up validation_matched/validation_mismatched."""
    folder = tmp_path / "mnli"
    folder.mkdir()
    for split in ("train", "validation_matched", "validation_mismatched", "test_matched"):
        (folder / f"{split}-00000-of-00001.parquet").write_bytes(b"")
    (folder / "train-00001-of-00002-0a1b2c.parquet").write_bytes(b"")
    assert [p.name for p in split_files(folder, "validation_matched")] == ["validation_matched-00000-of-00001.parquet"]
    assert split_files(folder, "validation") == []
    assert len(split_files(folder, "train")) == 2


def test_local_copy_without_the_split_is_one_clear_line(tmp_path: Path) -> None:
    hub_files(tmp_path / "glue", readme=False)
    with pytest.raises(DataUnavailableError) as info:
        load_hf_dataset(str(tmp_path / "glue"), "cola", "train")
    message = str(info.value)
    assert "\n" not in message
    assert "no split 'train' in the local copy" in message and "train-00000-of-00001.parquet" in message
    assert "folders holding 'train' data: ['rte'] (set task.subset to one of them)" in message


def test_train_runs_on_hub_files_without_readme(tmp_path: Path) -> None:
    """The issue's case: `rte/*.parquet` without the hub's README.md failed with "BuilderConfig 'rte' not found"."""
    hub_files(tmp_path / "glue", readme=False)
    base = [o for o in TINY if not o.startswith("task.num_")]
    cfg = compose_config([*base, "task=rte", f"task.dataset={tmp_path / 'glue'}"], tmp_path)
    metrics = run(cfg)
    assert 0.0 <= metrics["test/accuracy"] <= 100.0
