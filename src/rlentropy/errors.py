"""User-facing errors.

`UserError` and its subclasses are mistakes in what the user gave us (a config key, a path, a data
row). The CLI prints them as one line on stderr and exits with status 2, without a traceback.
Library code raises them; it never prints or exits itself.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input. The CLI prints `error: <message>` and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """An unknown, ill-typed or out-of-range configuration key. The message names the key."""


class DataError(UserError):
    """A bad dataset file or row. The message names the file and, where known, the line."""


class TrainingError(Exception):
    """Training cannot go on (for example three non-finite losses in a row). Exit status 1."""

    exit_code = 1
