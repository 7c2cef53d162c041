"""Loading datasets from the Hugging Face hub with an actionable error when it is unreachable."""

from __future__ import annotations

from typing import Any

from peftlab.errors import DataUnavailableError


def load_hf_dataset(path: str, name: str | None, split: str, **kwargs: Any) -> Any:
    """``datasets.load_dataset(path, name, split=split)``; offline/missing → :class:`DataUnavailableError`."""
    import datasets

    try:
        return datasets.load_dataset(path, name, split=split, **kwargs)
    except (OSError, ConnectionError, ValueError) as err:  # datasets' offline/not-found errors subclass these
        where = f"{path}" + (f"/{name}" if name else "")
        raise DataUnavailableError(
            f"could not load dataset '{where}' split '{split}' ({type(err).__name__}: {str(err)[:160]}). "
            f"Without network access, run `python -c \"import datasets; datasets.load_dataset('{path}'"
            + (f", '{name}'" if name else "")
            + ")\"` on a machine with network, copy its HF_HOME cache here and set HF_DATASETS_OFFLINE=1 "
            "(or point task.dataset to a local copy)."
        ) from err
