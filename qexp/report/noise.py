"""Whether a difference between two cells is a gain, a loss, or within noise.

A top-1 measured on n test images moves in steps of 100/n points and has a binomial standard
error of about 0.34 points at 87 % on 10 000 images. Two cells measured on the same images are
paired, though: they agree on most images, and what says whether one is better is how many
images only one of them gets right. McNemar's exact test asks whether that split could come
from a fair coin; a difference is called a gain or a loss only when p < ``SIGNIFICANCE``.
It needs each cell's per-image correctness (``test_correct`` in ``result.json``); cells written
before that field existed are not tested, and the report says so.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pandas as pd

from qexp.cells.evaluate import standard_error, unpack_correct
from qexp.report.cells import cell_name, has, settings_key
from qexp.report.selection import default_draw, fp32_cell, ok_cells, pytorch_int8, round_to_nearest

SIGNIFICANCE = 0.05
MAX_TEST_IMAGES = 1_000_000
SPREADS = 2  # a change within this many standard deviations over calibration draws is within noise


class Paired(NamedTuple):
    """Two cells on the same images: how many only the reference got right, how many only the cell, McNemar's p."""

    only_reference: int
    only_cell: int
    p: float

    @property
    def verdict(self) -> str:
        """``gain`` or ``loss`` of the cell against the reference when p < ``SIGNIFICANCE``, else ``within noise``."""
        if self.p >= SIGNIFICANCE:
            return "within noise"
        return "gain" if self.only_cell > self.only_reference else "loss"


class Spread(NamedTuple):
    """One cell's top-1 over calibration draws (the default draw among them): how many, their mean and standard
    deviation (n - 1 in the denominator)."""

    draws: int
    mean: float
    std: float


def spreads(frame: pd.DataFrame) -> dict[object, Spread]:
    """Each default-draw ok cell (by frame index) that was also run on other calibration draws, with its ``Spread``.

    Draws are cells whose settings differ only in ``calib_seed``; a cell run on one draw has no entry.
    """
    ok = ok_cells(frame)
    if ok.empty:
        return {}
    setting = settings_key(ok.assign(calib_seed=None))
    found = {}
    for index, _ in default_draw(ok).iterrows():
        top1 = ok.loc[setting == setting[index], "top1"].astype(float)
        if len(top1) > 1:
            found[index] = Spread(len(top1), float(top1.mean()), float(top1.std(ddof=1)))
    return found


def judged(change: float, test: Paired | None, spread: Spread | None) -> str:
    """The verdict of a change against FP32: a gain or a loss only when McNemar's test says so and, where the cell
    was run on several calibration draws, the change is also more than ``SPREADS`` standard deviations of them."""
    if test is None:
        return ""
    if spread is not None and abs(change) <= SPREADS * spread.std:
        return "within noise"
    return test.verdict


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: twice the Binomial(n, 1/2) tail at the smaller count, at most 1.

    ``n = only_first + only_second`` is the number of discordant images; exact integer
    arithmetic, so it holds for the thousands of images a 2-bit cell gets wrong.
    """
    if only_first < 0 or only_second < 0:
        raise ValueError(f"image counts must be >= 0; got {only_first!r} and {only_second!r}.")
    n = only_first + only_second
    term = tail = 1  # C(n, 0)
    for i in range(min(only_first, only_second)):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)


def correctness(cell: pd.Series) -> np.ndarray | None:
    """The cell's per-image correctness on the test split, or None when it was not recorded."""
    text = cell.get("test_correct")
    if not isinstance(text, str):
        return None
    return unpack_correct(text, int(cell["test_images"]))


def paired(reference: pd.Series, cell: pd.Series) -> Paired | None:
    """``cell`` against ``reference`` image by image; None unless both recorded it on the same test data."""
    first, second = correctness(reference), correctness(cell)
    if first is None or second is None or len(first) != len(second) or reference["data"] != cell["data"]:
        return None
    only_reference, only_cell = int((first & ~second).sum()), int((second & ~first).sum())
    return Paired(only_reference, only_cell, mcnemar_p(only_reference, only_cell))


def images_measured(frame: pd.DataFrame) -> int | None:
    """How many test images each top-1 was measured on; None when the cells do not agree on one number.

    Cells record ``test_images``. For cells written before that field, a top-1 measured on n
    images is a multiple of 100/n, so the least common denominator of all of them is n (or a
    divisor of it, should every count share a factor: with dozens of cells, never in practice).
    """
    ok = ok_cells(frame)
    if has(ok, "test_images"):
        counts = set(ok["test_images"].dropna().astype(int))
        return counts.pop() if len(counts) == 1 else None
    values = [*ok["top1"].dropna(), *ok["fp32_top1"].dropna()]
    if not values:
        return None
    denominators = [Fraction(value / 100).limit_denominator(MAX_TEST_IMAGES).denominator for value in values]
    images = math.lcm(*denominators)
    return images if images <= MAX_TEST_IMAGES else None


def worth(frame: pd.DataFrame) -> str:
    """One paragraph: what one test image and one standard error are worth, and how differences are judged."""
    images, fp32 = images_measured(frame), fp32_cell(frame)
    if images is None or fp32 is None:
        return "The number of test images behind these cells is not known: no difference is judged here."
    return (
        f"One test image is {100 / images:.2g} points of top-1 ({images:,} test images); one binomial standard "
        f"error of FP32's {fp32['top1']:.2f} % is {standard_error(fp32['top1'], images):.2f} points. Cells measured "
        "on the same images are compared image by image: a difference is called a gain or a loss only when an "
        f"exact McNemar test on the images only one of the two gets right gives p < {SIGNIFICANCE:g} and, for a cell "
        f"also calibrated on other draws of training images, the change exceeds {SPREADS} standard deviations of "
        "its top-1 over the draws; otherwise it is within noise."
    )


def versus_fp32(frame: pd.DataFrame) -> dict[object, Paired]:
    """Every quantized ok cell (by frame index) against the FP32 cell, where both recorded per-image correctness."""
    fp32 = fp32_cell(frame)
    if fp32 is None:
        return {}
    comparisons = {}
    for index, cell in ok_cells(frame).iterrows():
        result = paired(fp32, cell) if cell["quant"] != "none" else None
        if result is not None:
            comparisons[index] = result
    return comparisons


def ours_versus_pytorch(frame: pd.DataFrame) -> list[tuple[pd.Series, pd.Series, Paired]]:
    """Ours at W8A8 (round-to-nearest) against each PyTorch int8 flow with the same observer."""
    ours = round_to_nearest(ok_cells(frame))
    ours = ours[(ours["w_bits"] == 8) & (ours["a_bits"] == 8)]
    pairs = []
    for flow in ("fx", "pt2e"):
        for _, theirs in ok_cells(pytorch_int8(frame, flow)).iterrows():
            for _, cell in ours[ours["observer"] == theirs["observer"]].iterrows():
                result = paired(theirs, cell)
                if result is not None:
                    pairs.append((theirs, cell, result))
    return pairs


def noise_table(frame: pd.DataFrame) -> str:
    """Markdown: each cell against FP32, then ours against PyTorch at 8 bits; empty when nothing is paired."""
    fp32 = fp32_cell(frame)
    rows = [(fp32, frame.loc[index], result) for index, result in versus_fp32(frame).items()]
    rows += ours_versus_pytorch(frame)
    if not rows:
        return ""
    lines = [
        "| cell | against | top-1 change | only the reference right | only the cell right | p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for reference, cell, result in rows:
        lines.append(
            f"| {cell_name(cell)} | {cell_name(reference)} | {cell['top1'] - reference['top1']:+.2f} "
            f"| {result.only_reference} | {result.only_cell} | {p_text(result.p)} | {result.verdict} |"
        )
    return "\n".join(lines)


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
