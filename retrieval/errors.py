"""The one error family of ragdesk.

Every error a user can cause (a bad file, a missing index, an unknown model, a malformed suite line) is a
`RagdeskError`; the CLI prints it as one line and exits 1. It lives in `retrieval` because that package is the
bottom layer: `assistant` and `evals` import it from here, never the other way round. Programming errors stay
ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations

__all__ = ["ConfigError", "IndexMissingError", "InputError", "ModelError", "RagdeskError"]


class RagdeskError(Exception):
    """Base class: `str(err)` is the whole one-line message, `hint` the fix when there is one."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(RagdeskError):
    """A setting has a bad value (flag, RAGDESK_* variable, ragdesk.toml or a *Config dataclass)."""


class InputError(RagdeskError):
    """A file or value given by the user cannot be used (bad suite line, empty question, missing path)."""


class IndexMissingError(RagdeskError):
    """The collection asked for has not been indexed yet."""


class ModelError(RagdeskError):
    """A model cannot be found, fetched, verified or loaded."""
