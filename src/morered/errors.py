"""One exception hierarchy for the command line and the Python API.

Every error a user can cause derives from :class:`MoreRedError`; its message names the structure
or option and the reason in one line. The command line prints ``error: <message>`` and exits with
:attr:`MoreRedError.exit_code`; the API raises the same exceptions.

Exit codes of every command: 0 = everything done; 1 = some structures were rejected or failed
(each listed with its reason, e.g. in ``OUTPUT.errors.csv``); 2 = nothing done (unreadable input,
bad option, unusable model or output path, or an unexpected internal error); 130 = interrupted
(Ctrl-C or SIGTERM; what was finished is kept).
"""

from __future__ import annotations

#: exit codes of every command
EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 130


class MoreRedError(Exception):
    """Base class: something the user can fix; nothing was done."""

    exit_code = EXIT_FATAL


class OptionError(MoreRedError, ValueError):
    """An option or argument value is invalid (names the option and the reason)."""


class InputError(MoreRedError):
    """An input file cannot be used at all (missing, unreadable, no structures)."""


class ModelError(MoreRedError, ValueError):
    """A model file cannot be loaded or does not fit the request."""


class OutputError(MoreRedError):
    """An output path cannot be written (missing or read-only folder, a directory, the input)."""


class Interrupted(MoreRedError):
    """The run was interrupted (Ctrl-C, SIGTERM); what was finished has been written."""

    exit_code = EXIT_INTERRUPTED


class StructureError(MoreRedError, ValueError):
    """One structure cannot be handled (bad elements, overlapping atoms, too large, ...)."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")
