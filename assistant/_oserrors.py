"""What the operating system said, as the one-line error the CLI prints.

A report written into a folder that is really a file, a home folder on a read-only disk, a full disk: these
are the user's environment, not ragdesk's bugs, so `ragdesk` prints them like any other bad input (one line,
exit 1) instead of a traceback. `disk_problem` recognises them and says what to do; everything else it
returns None for, so genuine programming errors keep their tracebacks. It does not retry or work around.
"""

from __future__ import annotations

import errno
import sqlite3
import tempfile
from pathlib import Path

from retrieval.errors import ConfigError

__all__ = ["disk_problem", "ensure_home"]

_HINTS = {
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.EROFS: "the disk is read-only; choose a folder on a writable disk",
    errno.ENOTDIR: "part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "part of the path is a file, not a folder; choose another path",
    errno.ENOENT: "check that the path and the folders above it exist",
    errno.ENOSPC: "the disk is full; free some space and run it again",
    errno.EDQUOT: "the disk quota is used up; free some space and run it again",
    errno.EISDIR: "that is a folder; give a file name",
    errno.ENAMETOOLONG: "use a shorter path",
}
_HOME_HINT = "set RAGDESK_HOME or --home to a folder you can write to"
# sqlite3 reports the disk's refusals as OperationalError with these messages
_SQLITE = ("readonly database", "unable to open database file", "disk i/o error", "database or disk is full")


def disk_problem(exc: BaseException) -> str | None:
    """A one-line message for an error of the disk or file system, or None when `exc` is something else."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if any(s in text.lower() for s in _SQLITE):
            return f"the database cannot be written: {text} ({_HOME_HINT})"
        return None
    if not isinstance(exc, OSError) or isinstance(exc, ConnectionError | TimeoutError):
        return None
    reason = exc.strerror or str(exc)
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    hint = _HINTS.get(exc.errno or 0, "check the path and the disk")
    return f"{reason}: {where} ({hint})" if where else f"{reason} ({hint})"


def ensure_home(home: Path) -> None:
    """Create the home folder and check that a file can be written in it, or raise a ConfigError saying so.

    Run before a command that writes (index), so that a read-only or misplaced RAGDESK_HOME is named as such
    rather than as the collection folder deep inside it that could not be made.
    """
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        raise ConfigError(f"the home folder {home} cannot be written: {exc.strerror or exc}", _HOME_HINT) from None
