"""User-facing errors: one paragraph on stderr, a non-zero exit, no traceback.

Hydra prints a (stripped) traceback for any exception that leaves a task function; for a
mistyped path or an out-of-range bit width that is noise. Code raises ``QexpError`` for
problems the user can fix, and each entry point wraps its body in ``exit_on_user_error``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USER_ERROR = 2


class QexpError(ValueError):
    """A problem with the user's input or environment that the message explains in full."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a ``QexpError`` into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except QexpError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
