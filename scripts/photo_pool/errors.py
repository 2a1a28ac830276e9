"""How the photo-pool fetch reports problems: FetchError for what stops a package (or the run), warn() for the rest."""

from __future__ import annotations

import sys


class FetchError(RuntimeError):
    """A failure the user can act on; main() prints it and exits non-zero."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
