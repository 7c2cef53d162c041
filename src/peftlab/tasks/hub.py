"""Loading a data set from the Hugging Face hub (or its ``HF_HOME`` cache) or from a local copy, with one
actionable error line when it cannot load.

``path`` is a hub id or a local directory. A local directory is read in the layouts a copy made for an offline
machine comes in (docs/glue.md), looked for in ``<path>/<name>`` first (when ``name``, the hub config such
as ``rte``, is given and that folder exists), then in ``<path>`` itself (a copy of one config):

- the hub repository's files (``hf download <id> --repo-type dataset --local-dir <path>``), with or without its
  ``README.md``: ``<split>-00000-of-00001.parquet`` (any shard count, optional ``-<hash>`` suffix);
- the hub's parquet export (``refs/convert/parquet``) or per-split folders of data files: ``<split>/*.parquet``;
- ``save_to_disk`` of a ``DatasetDict`` (or of one ``Dataset`` per split): ``<split>/state.json``;
- plain files ``<split>.parquet`` / ``.jsonl`` / ``.json`` / ``.csv`` / ``.arrow``.

Split names are matched exactly (``validation`` does not pick up ``validation_matched``). Anything else (a hub
id, a local folder whose ``README.md`` declares its configs) goes to ``datasets.load_dataset(path, name)``
unchanged; a hub id already in the ``HF_HOME`` cache loads from there with ``HF_DATASETS_OFFLINE=1``.

Why not ``load_dataset(<local dir>, name)`` for all: without the hub's ``README.md`` ``datasets`` infers one
config named ``default``, so ``name='rte'`` fails with "BuilderConfig 'rte' not found", and it cannot read a
``save_to_disk`` folder at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from peftlab.errors import DataUnavailableError

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def split_files(folder: Path, split: str) -> list[Path]:
    """The data files of ``split`` in ``folder``: ``<split>.<ext>``, the hub's shards
    ``<split>-NNNNN-of-NNNNN[-<hash>].<ext>``, else every data file of a ``<split>/`` sub-folder."""
    name = re.compile(rf"{re.escape(split)}(-\d{{5}}-of-\d{{5}}(-[0-9a-f]+)?)?")
    files = [p for p in folder.glob("*") if p.suffix in BUILDERS and p.is_file() and name.fullmatch(p.stem)]
    sub = folder / split
    if not files and sub.is_dir() and not (sub / "state.json").is_file():
        files = [p for p in sub.glob("*") if p.suffix in BUILDERS and p.is_file()]
    return sorted(files)


def _load_local(root: Path, name: str | None, split: str, **kwargs: Any) -> Any | None:
    """``split`` from a local copy in one of the layouts above; None when no layout matches."""
    import datasets

    folders = ([root / name] if name and (root / name).is_dir() else []) + [root]
    for folder in folders:
        if (folder / split / "state.json").is_file():  # save_to_disk
            return datasets.load_from_disk(str(folder / split))
        files = split_files(folder, split)
        if files:
            builders = sorted({BUILDERS[f.suffix] for f in files})
            if len(builders) > 1:
                raise DataUnavailableError(f"split '{split}' in {folder} mixes file formats {builders}: keep one")
            return datasets.load_dataset(builders[0], data_files={split: [str(f) for f in files]}, split=split,
                                         **kwargs)
    return None


def _local_hint(root: Path, name: str | None, split: str) -> str:
    """What a local copy should look like, what is there, and the override that fits when one does."""
    where = root / name if name and (root / name).is_dir() else root
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in where.glob("*"))
    configs = sorted(p.name for p in root.glob("*") if p.is_dir() and any(p.glob(f"{split}*")))
    fix = (f"; folders holding '{split}' data: {configs} (set task.subset to one of them)"
           if configs and name not in configs else "")
    return (f"no split '{split}' in the local copy {where} (found {found[:8]}{' …' if len(found) > 8 else ''}); "
            f"expected {split}-00000-of-00001.parquet (the hub's files), {split}/ (save_to_disk or the hub's "
            f"parquet export) or {split}.jsonl/.csv (docs/glue.md){fix}")


def load_hf_dataset(path: str, name: str | None, split: str, **kwargs: Any) -> Any:
    """Split ``split`` of config ``name`` of ``path`` (hub id or local copy, see the module docstring);
    missing, offline or unreadable → :class:`DataUnavailableError` with the fix."""
    import datasets

    root = Path(path).expanduser()
    local = root.is_dir()
    try:
        if local and (dataset := _load_local(root, name, split, **kwargs)) is not None:
            return dataset
        return datasets.load_dataset(path, name, split=split, **kwargs)
    except (OSError, ConnectionError, ValueError) as err:  # datasets' offline/not-found errors subclass these
        if isinstance(err, DataUnavailableError):
            raise
        cause = f"{type(err).__name__}: {str(err)[:160]}"
        if local:
            raise DataUnavailableError(f"could not load {_local_hint(root, name, split)} ({cause})") from err
        where = f"{path}" + (f"/{name}" if name else "")
        raise DataUnavailableError(
            f"could not load dataset '{where}' split '{split}' ({cause}). "
            f"Without network access, run `python -c \"import datasets; datasets.load_dataset('{path}'"
            + (f", '{name}'" if name else "")
            + ")\"` on a machine with network, copy its HF_HOME cache here and set HF_DATASETS_OFFLINE=1 "
            "(or copy the data set's files and point task.dataset to them: docs/glue.md)."
        ) from err
