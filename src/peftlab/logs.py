"""What a run prints and what its ``train.log`` keeps.

- ``train.py`` runs under Hydra's job logging (``conf/hydra/job_logging/peftlab.yaml``): the root logger writes
  the bare message to the console (:class:`ConsoleHandler`) and the message with time, logger and level to
  ``<run dir>/train.log``. peftlab's own lines (``[peftlab] ...``) are INFO records of ``peftlab.*`` loggers.
- Lightning adds its own console handler to ``pytorch_lightning`` / ``lightning_fabric`` when it is imported
  before any logging is configured (it always is: Hydra configures logging when the job starts) and stops their
  records from reaching the root logger, so ``train.log`` stayed empty. :func:`route_library_logs` hands them
  back to the root logger.
- :data:`HARMLESS_WARNINGS` and :data:`HARMLESS_LOGS`: the third-party messages every run printed that say
  nothing about the run, each filtered by exact message, category and module (not a blanket filter), with the
  reason it is harmless. Any other warning still shows.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class Harmless:
    """A known third-party message: ``message`` is a regex matched at its start; ``source`` the module a warning
    is attributed to (``warnings``' ``module``) or the logger that emits a log record."""

    message: str
    source: str
    why: str
    category: type[Warning] = UserWarning


HARMLESS_WARNINGS = (
    Harmless(r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.utilities\._pytree",
             "Lightning 2.6's pytree helper builds torch's LeafSpec, deprecated since torch 2.10; it only flattens "
             "the batch/step outputs, the same with either class (printed at every fit and test)", FutureWarning),
    Harmless(r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils",
             "peft reads transformers' deprecated alias of is_activation_checkpointing when it wraps a model; the "
             "alias returns the same value (activation checkpointing is off)", FutureWarning),
    Harmless(r"Adapter '[^']*': \d+ LoRA tensor\(s\) have invalid shape", r"peft\.utils\.save_and_load",
             "peft takes zero-sized lora_A/lora_B for unsaved DeepSpeed/FSDP shards; exports here are written from an "
             "unsharded model, and a zero-sized pair is an AdaLoRA matrix whose rank allocation reached 0"),
    Harmless(r"Sparse invariant checks are implicitly disabled", r"peft\.tuners\.shira\.layer",
             "torch's note that it does not validate the sparse COO tensor SHiRA builds from its own fixed, in-range "
             "indices every forward"),
)
HARMLESS_LOGS = (
    Harmless(r"💡 Tip: For seamless cloud", "pytorch_lightning.utilities.rank_zero",
             "Lightning advertises its cloud logger and model registry (litlogger, litmodels) at every Trainer "
             "start; nothing about the run"),
)
LIBRARY_LOGGERS = ("pytorch_lightning", "lightning_fabric")


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_known_warnings() -> None:
    """Install the filters of :data:`HARMLESS_WARNINGS` and :data:`HARMLESS_LOGS` (idempotent)."""
    for w in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=w.message, category=w.category, module=w.source)
    for h in HARMLESS_LOGS:
        logger = logging.getLogger(h.source)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == h.message for f in logger.filters):
            logger.addFilter(_DropMatching(h.message))


def route_library_logs() -> None:
    """Under ``train.py``'s job logging (a :class:`ConsoleHandler` on the root logger): send Lightning's records to
    the root logger's handlers (console and ``train.log``) instead of the console handler Lightning attached to
    itself, and log warnings (``logging.captureWarnings``) so that ``train.log`` keeps them too. Elsewhere (tests,
    notebooks, scripts) nothing changes."""
    if not any(isinstance(h, ConsoleHandler) for h in logging.getLogger().handlers):
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # the one Lightning adds at import
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes to whatever ``sys.stdout`` is when a record is emitted, as ``print`` does,
    so a line logged while the progress bar is drawn (which redirects stdout) lands above the bar."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        """Fixed to the current ``sys.stdout``; ``logging`` assigns it in ``__init__`` and ``setStream``."""
