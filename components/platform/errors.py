"""User-facing errors: one clear message naming the file, line, key or path at fault.

The CLI turns a ``GenPRMError`` into that message on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations


class GenPRMError(Exception):
    """Bad input or configuration: the message says what and where."""


class ConfigError(GenPRMError):
    """An unknown, missing or mistyped key in params.yaml or an override."""


class DataError(GenPRMError):
    """A malformed input record: the message names the file and line (or row)."""
