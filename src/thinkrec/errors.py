"""User-facing errors.

Every error a user can cause by their input (a bad file, a bad config key, a missing dataset) is raised as
a :class:`ThinkrecError`. The CLI prints its message (never a traceback) and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class ThinkrecError(Exception):
    """An error caused by user input, with a message that says what is wrong and how to fix it."""


class DataError(ThinkrecError):
    """A data file is missing, empty or malformed."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        text = f"{': '.join([', '.join(where)] if where else [])}{': ' if where else ''}{message}"
        if hint:
            text += f"\n  how to fix: {hint}"
        super().__init__(text)
        self.path = path
        self.line = line
        self.field = field


class ConfigError(ThinkrecError):
    """A configuration file or override is invalid."""
