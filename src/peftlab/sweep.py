"""What a multirun says when it ends: which jobs failed and why, and an exit status that says whether any did.

Every job of ``train.py -m`` leaves ``outcome.json`` in its job directory (``train.py`` writes it through
:func:`write_outcome`: ``complete``, or ``failed`` with the error), whatever launcher ran it (locally, or SLURM
jobs through submitit: the files are on the shared file system). :class:`SweepSummary`, a Hydra callback
(``conf/config.yaml``, ``hydra.callbacks``), reads them in ``on_multirun_end``, prints one line per failed job and
exits with status 1 when any job failed. ``scripts/reproduce.py`` reads the same files for all its multiruns.

The callback also checks, before Hydra creates it, that the run (or sweep) directory can be created: a
``hydra.run.dir`` under a file otherwise fails inside Hydra with a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from peftlab.config_utils import check_writable
from peftlab.errors import EXIT_FAILED, ConfigError, fail

OUTCOME = "outcome.json"


def write_outcome(output_dir: str | Path, overrides: list[str], error: BaseException | None) -> None:
    """Record this job's outcome in its directory (one small JSON file)."""
    outcome = {"status": "failed" if error else "complete", "overrides": overrides,
               "error": f"{type(error).__name__}: {error}" if error else None}
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / OUTCOME).write_text(json.dumps(outcome, indent=1) + "\n")


def collect(root: str | Path) -> list[dict[str, Any]]:
    """The outcomes of every job under ``root`` (a sweep directory, or a folder of them), by job directory."""
    found = []
    for path in sorted(Path(root).rglob(OUTCOME)) if Path(root).is_dir() else []:
        outcome = json.loads(path.read_text())
        outcome["dir"] = str(path.parent)
        found.append(outcome)
    return found


def summary(outcomes: list[dict[str, Any]], what: str) -> list[str]:
    """Lines saying how many of ``what``'s jobs failed, then one line per failed job: its directory, the overrides
    that set it apart from the other jobs, and its error."""
    failed = [o for o in outcomes if o["status"] != "complete"]
    shared = set.intersection(*(set(o["overrides"]) for o in outcomes)) if len(outcomes) > 1 else set()
    lines = [f"{what}: {len(outcomes) - len(failed)} of {len(outcomes)} job(s) complete, {len(failed)} failed"]
    for o in failed:
        own = " ".join(x for x in o["overrides"] if x not in shared)
        lines.append(f"  FAILED {o['dir']} ({own}): {' '.join(str(o['error']).split())}")
    return lines


class SweepSummary(Callback):
    """Hydra callback: output directories checked up front; a multirun's end lists its failed jobs, exit 1."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check_dir("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self._check_dir("hydra.sweep.dir", sweep_dir)
        for stale in sweep_dir.rglob(OUTCOME) if sweep_dir.is_dir() else []:  # an earlier sweep in the same dir
            stale.unlink()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcomes = collect(config.hydra.sweep.dir)
        lines = summary(outcomes, f"[peftlab] multirun {config.hydra.sweep.dir}")
        print("\n".join(lines), file=sys.stderr if len(lines) > 1 else sys.stdout, flush=True)
        if len(lines) > 1:
            sys.exit(EXIT_FAILED)

    @staticmethod
    def _check_dir(key: str, directory: str | Path) -> None:
        try:
            check_writable(key, Path(directory))
        except ConfigError as err:
            fail(err)
