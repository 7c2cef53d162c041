"""Errors peftlab raises for bad input, and the exit statuses of its commands.

Every user-facing failure (bad config, missing data, unreachable hub) is a :class:`PeftlabError`;
``train.py`` prints its message on one line (:func:`fail`) and exits with status 2 instead of a traceback.
A multirun (or ``scripts/reproduce.py``) in which any run failed exits with status 1 after listing them.
"""

import sys
from typing import NoReturn

EXIT_FAILED = 1  # a run crashed (traceback), or a multirun/reproduction had failed runs (listed)
EXIT_BAD_INPUT = 2  # a PeftlabError: bad input found before training, said in one line


class PeftlabError(Exception):
    """Base class of the errors meant for the user, not for a developer's traceback."""


class ConfigError(PeftlabError, ValueError):
    """A configuration that cannot work: unknown name, impossible value, inconsistent settings."""


class DataUnavailableError(PeftlabError, FileNotFoundError):
    """A dataset or model that could not be loaded (offline, missing files); the message says how to get it."""


def fail(err: PeftlabError) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with :data:`EXIT_BAD_INPUT`."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)
