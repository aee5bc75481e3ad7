"""The errors that mean "the user can fix this", and nothing else.

Every message names the problem and the fix. The command line prints a :class:`UserError` as one
line and exits with code 2; any other exception is a bug and keeps its traceback
(``tresnet_ft/cli/command.py``). Each class also derives from the built-in error a caller would
catch without knowing this module (``ValueError``, ``FileNotFoundError``, ...).
"""
from __future__ import annotations


class UserError(Exception):
    """Base of the family: bad input, a missing file or package, a run that cannot go on as configured."""


class InvalidValueError(UserError, ValueError):
    """A setting, argument or input value that cannot work (the message says what was expected and what arrived)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user pointed to, or that the run needs, is not there."""


class MissingPackageError(UserError, ImportError):
    """An optional package that one feature needs is not installed (the message gives the ``pip install``)."""


class UnavailableError(UserError, RuntimeError):
    """Something to fetch could not be fetched now (offline, no such file on the server)."""


class DiskFullError(UserError, OSError):
    """The disk (or the user's quota) filled up while writing an output; the previous file is intact.

    An ``OSError`` too, with the original ``errno``, so code that handles disk errors still catches it.
    """


class TrainingDivergedError(UserError, FloatingPointError):
    """The training loss became NaN or infinite (the message names the step and likely causes)."""


__all__ = ["DiskFullError", "InvalidValueError", "MissingInputError", "MissingPackageError", "TrainingDivergedError",
           "UnavailableError", "UserError"]
