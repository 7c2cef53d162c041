"""Checkpoints: the callback that writes them and the one safe way to read them.

- :class:`LastCheckpoint` (``conf/callbacks/default.yaml``): Lightning's ``ModelCheckpoint`` rewrites
  ``last.ckpt`` every ``every_n_train_steps`` optimizer steps, and at the end of ``fit`` only when it never saved
  one (``ModelCheckpoint.on_train_end``). A run of 192 steps saving every 50 then ends with the checkpoint of step
  150, and an export of it silently loses the last 42 steps. This subclass also writes ``last.ckpt`` when
  ``fit`` ends at a step it has not saved yet, so the checkpoint of a finished run is its final state.
- :func:`load_checkpoint`: ``torch.load(weights_only=True)``. Everything peftlab saves is tensors, numbers,
  strings and containers of them (the RNG states too, see ``peftlab.module.get_rng_state``); a file carrying
  any other pickled object (which could run code when unpickled) is refused with one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from peftlab.errors import ConfigError


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the final step of a completed ``fit``.

    Saved from ``on_train_end`` (after the last optimizer step and the last validation), through the same
    ``_save_last_checkpoint`` Lightning's own ``on_train_end`` uses, unless this step was already saved. A run
    stopped by an exception or Ctrl-C never reaches ``on_train_end``: its ``last.ckpt`` stays the last periodic
    one, which is what an exact resume needs (a checkpoint taken mid-step could not be resumed exactly).
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")  # torch's weights_only refusal
_WEIGHTS_ONLY = re.compile(r"WeightsUnpickler error: ([^\n]*)")


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only=True`` onto the CPU.

    ``mmap=True`` maps the tensors' storage instead of reading it (a cheap check of what a file holds).
    Raises :class:`ConfigError` (one line) for a missing, unreadable or non-Lightning file and for a file
    that holds a pickled Python object.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found (runs save one with callbacks=default)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - unpickling, zip and storage failures alike end here
        text = str(err)
        found = _GLOBAL.search(text)
        if found:
            raise ConfigError(f"checkpoint {path} holds a pickled Python object ({found.group(1)}): refused, as "
                              "unpickling it could run arbitrary code; use a checkpoint written by a peftlab run"
                              ) from None
        detail = _WEIGHTS_ONLY.search(text)
        reason = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
        raise ConfigError(f"checkpoint {path} is not a readable checkpoint ({type(err).__name__}: {reason})") from None
    if not (isinstance(ckpt, dict) and "state_dict" in ckpt):
        raise ConfigError(f"checkpoint {path} holds no 'state_dict': not a Lightning checkpoint of a peftlab run")
    return ckpt
