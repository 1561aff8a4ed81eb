"""``Unsupported``: what a method has no implementation for, recorded as a cell of its own, not as a failure."""

from __future__ import annotations


class Unsupported(Exception):
    """This combination has no implementation; the message says why."""
