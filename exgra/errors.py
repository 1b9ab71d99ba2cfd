"""One exception type for every mistake a user can make.

The CLI turns an :class:`ExgraError` into one red line and exit code 1 (a traceback only with
``--debug``). Library users catch it like any other exception.
"""

from __future__ import annotations


class ExgraError(Exception):
    """A user-caused error (bad path, bad JSON, wrong config key, network failure, ...).

    The message must be one self-contained sentence that tells the user what to fix.
    """


class ConfigError(ExgraError):
    """A configuration file or override is invalid."""


class DataError(ExgraError):
    """An input data file or record is invalid."""
