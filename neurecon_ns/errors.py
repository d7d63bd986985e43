"""User-facing errors: one sentence that names the file and the fix, never a bare traceback.

`UserInputError` is raised at the edges (data parsers, CLI tools). The hook installed below makes
`ns-train`, `ns-render` and `neurecon` print such an error as one line and exit with status 1,
while every other exception keeps its usual traceback.
"""

from __future__ import annotations

import sys


class UserInputError(ValueError):
    """An input the user can fix: a wrong path, a malformed file, an option that does not fit."""


_previous_hook = sys.excepthook


def _one_sentence_hook(exc_type, exc, tb):
    if issubclass(exc_type, UserInputError):
        print(f"error: {exc}", file=sys.stderr)
        return
    _previous_hook(exc_type, exc, tb)


def install_excepthook() -> None:
    """Print `UserInputError`s as one line (idempotent)."""
    if sys.excepthook is not _one_sentence_hook:
        sys.excepthook = _one_sentence_hook
