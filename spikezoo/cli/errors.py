"""The exceptions a command raises to report a problem to the user."""

from __future__ import annotations

__all__ = ["CommandError", "UsageError"]


class CommandError(Exception):
    """A problem the user can fix: ``main`` prints it as one line with its hint and exits 1.

    Args:
        message: what went wrong, naming what was expected and what came.
        hint: what to do about it, e.g. ``"'spikezoo list' shows the models"``.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(CommandError):
    """Arguments the parser rejects (``prog`` is the command that rejected them); exits 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, prog: str = "spikezoo") -> None:
        super().__init__(message, hint)
        self.prog = prog
