"""User errors: input that cannot run, each with a message that says what to change.

The command line prints these as one line and exits 2; any other exception is a bug and
keeps its traceback. They subclass ``ValueError`` so that library callers who catch bad
arguments the usual way still do.
"""

from __future__ import annotations

__all__ = ["UserError", "SpecError", "OutputDirError", "DataFileError", "TrackingError"]


class UserError(ValueError):
    """Input that cannot run; the message names what is wrong and what to change."""


class SpecError(UserError):
    """A trial or sweep spec (or a function argument) that cannot run."""


class OutputDirError(UserError):
    """An output dir that cannot be used: not writable, or holding another sweep."""


class DataFileError(UserError):
    """A user data file that is missing or does not hold what a data set needs."""


class TrackingError(UserError):
    """A tracking URI or MLflow store that cannot be used."""
