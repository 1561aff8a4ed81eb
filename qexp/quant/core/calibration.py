"""The calibration set's one refusal that every method shares: it must not be empty."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

EMPTY_CALIBRATION = "the calibration set is empty; expected at least one calibration image (data.calib_size)."


def first_and_all(batches: Iterable[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The first calibration batch (what a graph is traced with) and every batch, the first included.

    Raises ``ValueError`` for an empty set: ``data.calib_size`` refuses 0 before this, so here it
    is a caller's mistake.
    """
    batches = list(batches)
    if not batches:
        raise ValueError(EMPTY_CALIBRATION)
    return batches[0], batches
