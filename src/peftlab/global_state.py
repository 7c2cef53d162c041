"""Process-wide state that Lightning changes during a run and never restores, kept for the caller.

- ``Trainer(deterministic=True)`` (``conf/trainer/cpu.yaml``) calls ``torch.use_deterministic_algorithms(True)``,
  sets ``torch.backends.cudnn.benchmark`` and ``os.environ["CUBLAS_WORKSPACE_CONFIG"]``
  (``pytorch_lightning/trainer/connectors/accelerator_connector.py``, ``_set_torch_flags``);
- ``Trainer.fit``/``test`` catching a KeyboardInterrupt set SIGINT to ``SIG_IGN`` ("user could press Ctrl+C many
  times") and exit (``pytorch_lightning/trainer/call.py``, ``_call_and_handle_interrupt``).

Under ``python train.py`` the process ends with the run, so nothing of this matters. A caller that goes on in the
same process (tests, notebooks, ``scripts/``) would keep it: every later model runs with deterministic algorithms,
and a SIGINT left ignored is inherited by every child process it starts (an ignored signal stays ignored across
``exec``, and CPython then installs no KeyboardInterrupt handler), so a ``train.py`` child could not be stopped with
Ctrl-C. :func:`kept` puts it back.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENV_KEYS = ("CUBLAS_WORKSPACE_CONFIG",)


@contextmanager
def kept() -> Iterator[None]:
    """Restore, on the way out (also on an exception or SystemExit), the state listed in the module docstring."""
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    env = {key: os.environ.get(key) for key in ENV_KEYS}
    try:
        yield
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = benchmark
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
