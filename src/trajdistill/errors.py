"""The package's one base exception: bad input, not a bug.

Every error type the package raises for something the user can fix (a flag, a file, the
data, a setting) derives from TrajdistillError, so the command line catches this one
class and prints one `error: ...` line; anything else is a genuine bug and keeps its
traceback. It is a ValueError so code that caught ValueError keeps working. Warnings reach
the user the same way: one `warning: ...` line (`one_line_warning`).
"""
from __future__ import annotations

import sys


class TrajdistillError(ValueError):
    """A problem the user can fix; the message names the flag or file and what was expected."""


class ConfigError(TrajdistillError):
    """Settings that cannot work together (or with this data); the message names the flag."""


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """A `warnings.showwarning` for the command line: `warning: <message>` on one line, without
    the file position and source line Python's default shows (they name our code, not the
    user's input)."""
    print("warning: " + " ".join(str(message).split()), file=file or sys.stderr)
