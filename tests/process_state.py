"""The process-global state a test must leave as it found it (signal handlers and mask, environment, working
directory, torch's global switches, logging), and the autouse fixture of ``tests/conftest.py`` that fails a test
which changes it, then puts it back.

Why: a later test runs in what an earlier one left, and ``subprocess`` children inherit the signal dispositions,
the signal mask and the environment of the pytest process, so such a leak makes a test's outcome depend on the
order and on the tests run before it. Found so: every in-process ``train.run`` turned on
``torch.use_deterministic_algorithms`` and set ``CUBLAS_WORKSPACE_CONFIG`` for the rest of the session
(``Trainer(deterministic=True)``; now put back by ``peftlab.global_state``); Hydra's job logging of an in-process
``train.py`` kept a handler writing later tests' logs into that run's ``train.log``. The Ctrl-C test failed (exit 0
instead of 130) because its ``train.py`` child inherited an ignored SIGINT (CPython then installs no
KeyboardInterrupt handler): a suite started in the background of a non-interactive shell (``make test &``) runs
with SIGINT ignored; that test now runs in-process with Python's own handler.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, fields
from typing import Any

import torch

# set by pytorch_lightning.seed_everything on every run (train.run, build): the next run sets them again, and a
# train.py child sets its own; restored after each test without failing it
RESTORED_QUIETLY = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")
PYTEST_OWN = "PYTEST_CURRENT_TEST"  # pytest's, set at each phase of a test
SETTABLE = sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP})
LOGGERS = ("", "pytorch_lightning", "lightning_fabric", "peftlab")  # root, Lightning's, ours


def logging_state() -> tuple:
    """Level, handlers and propagation of :data:`LOGGERS`, and whether warnings go to logging (what Hydra's job
    logging and peftlab.logs.route_library_logs set in a ``train.py`` process)."""
    loggers = [logging.getLogger(n) for n in LOGGERS]
    return (*((g.level, tuple(g.handlers), g.propagate) for g in loggers),
            getattr(logging, "_warnings_showwarning", None) is not None)


def restore_logging(state: tuple) -> None:
    """Put back a :func:`logging_state`; handlers added since are closed (Hydra's ``train.log`` file handler)."""
    for name, (level, handlers, propagate) in zip(LOGGERS, state[:-1], strict=True):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h not in handlers]:
            handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(state[-1])


@dataclass(frozen=True)
class ProcessState:
    signals: dict[int, Any]
    blocked: frozenset[int]
    env: dict[str, str]
    cwd: str
    threads: int
    dtype: torch.dtype
    grad: bool
    deterministic: tuple[bool, bool]  # use_deterministic_algorithms, and its warn_only
    cudnn_benchmark: bool
    logging: tuple

    @classmethod
    def now(cls) -> ProcessState:
        return cls(signals={s: signal.getsignal(s) for s in SETTABLE},
                   blocked=frozenset(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                   env=dict(os.environ), cwd=os.getcwd(), threads=torch.get_num_threads(),
                   dtype=torch.get_default_dtype(), grad=torch.is_grad_enabled(),
                   deterministic=(torch.are_deterministic_algorithms_enabled(),
                                  torch.is_deterministic_algorithms_warn_only_enabled()),
                   cudnn_benchmark=torch.backends.cudnn.benchmark, logging=logging_state())

    def changes(self, after: ProcessState) -> list[str]:
        """What ``after`` changed, one line per item, except the environment keys restored quietly."""
        out = [f"signal {signal.Signals(s).name}: {self.signals[s]!r} -> {after.signals[s]!r}"
               for s in SETTABLE if self.signals[s] != after.signals[s]]
        out += [f"signal mask: {sorted(self.blocked)} -> {sorted(after.blocked)}"] * (self.blocked != after.blocked)
        out += [f"os.environ[{k!r}]: {self.env.get(k)!r} -> {after.env.get(k)!r}"
                for k in sorted(self.env.keys() | after.env.keys())
                if self.env.get(k) != after.env.get(k) and k not in (*RESTORED_QUIETLY, PYTEST_OWN)]
        out += [f"{f.name}: {getattr(self, f.name)!r} -> {getattr(after, f.name)!r}" for f in fields(self)
                if f.name not in ("signals", "blocked", "env")
                and getattr(self, f.name) != getattr(after, f.name)]
        return out

    def restore(self) -> None:
        for s in SETTABLE:
            if self.signals[s] is not None and signal.getsignal(s) != self.signals[s]:  # None: not set from Python
                signal.signal(s, self.signals[s])
        signal.pthread_sigmask(signal.SIG_SETMASK, self.blocked)
        for key in os.environ.keys() - self.env.keys() - {PYTEST_OWN}:
            del os.environ[key]
        os.environ.update({k: v for k, v in self.env.items() if k != PYTEST_OWN and os.environ.get(k) != v})
        os.chdir(self.cwd)
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.dtype)
        torch.set_grad_enabled(self.grad)
        torch.use_deterministic_algorithms(self.deterministic[0], warn_only=self.deterministic[1])
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        restore_logging(self.logging)
