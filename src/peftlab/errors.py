"""Errors peftlab raises for bad input.

Every user-facing failure (bad config, missing data, unreachable hub) is a :class:`PeftlabError`;
``train.py`` prints its message on one line and exits with status 2 instead of a traceback.
"""


class PeftlabError(Exception):
    """Base class of the errors meant for the user, not for a developer's traceback."""


class ConfigError(PeftlabError, ValueError):
    """A configuration that cannot work: unknown name, impossible value, inconsistent settings."""


class DataUnavailableError(PeftlabError, FileNotFoundError):
    """A dataset or model that could not be loaded (offline, missing files); the message says how to get it."""
