"""``python train.py <overrides>`` and ``scripts/reproduce.py`` run in the test's process (no interpreter start-up per
case)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import ROOT
from tests.process_state import logging_state, restore_logging


def _load_cli() -> Any:
    """The root ``train.py`` as a module. Hydra finds ``conf/`` next to the task function's file only when that
    function belongs to ``__main__`` (as under ``python train.py``), so it is marked so."""
    spec = importlib.util.spec_from_file_location("peftlab_train_cli", ROOT / "train.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.main.__wrapped__.__module__ = "__main__"
    return cli


CLI = _load_cli()


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python train.py <args>`` in this process; its exit status (0 when it returns). The logging a ``train.py``
    process sets up (Hydra's job logging: console and ``train.log`` handlers; Lightning's loggers routed to them) is
    put back afterwards, so that later tests do not log into this run's ``train.log``."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    logs = logging_state()
    try:
        CLI.main()
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        GlobalHydra.instance().clear()
        restore_logging(logs)
    return 0


def reproduce_script() -> Any:
    """``scripts/reproduce.py`` as a module (its ``parse`` and ``main``)."""
    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    return script
