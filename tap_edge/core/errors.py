# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""User-facing errors: one line saying what is wrong and what to do; the CLI prints it without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a flag, a model). ``hint`` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ProfileError(UserError):
    """A device profile that does not validate (names the file, the field and the problem)."""


class ModelLoadError(UserError):
    """A model that cannot be read by any front-end."""
