"""The README's generated blocks: tables written by the report between marker comments, never by hand.

A block is ``<!-- report:NAME -->`` ... ``<!-- /report:NAME -->`` in the README; everything
between the markers is replaced by what ``readme_blocks`` makes of the cells, the rest of the
README is left as it is. A test compares the committed README with the blocks made from the
committed ``results.csv``, so the README cannot drift from the report.
"""

from __future__ import annotations

import re

import pandas as pd

from qexp.report.cells import fp32_cell, recipes
from qexp.report.tables import comparison_table, glance_table, mixed_table, onnx_table, recovery_table, size_table

EMPTY = "No cells of this kind in the report."


def readme_blocks(frame: pd.DataFrame, glance_image: str) -> dict[str, str]:
    """The text of each README block, by name; ``glance_image`` is the path of ``glance.png`` from the README."""
    fp32 = fp32_cell(frame)
    caption = "Test top-1 (%) and the change against FP32"
    caption += f" ({fp32['top1']:.2f} %):" if fp32 is not None else ":"
    uniform = frame[recipes(frame).isna()]  # cells with a recipe are in the recovery block
    return {
        "glance": f"{glance_table(frame)}\n\n![results at a glance]({glance_image})",
        "results": f"{caption}\n\n{comparison_table(uniform)}",
        "sizes": size_table(frame) or EMPTY,
        "recovery": recovery_table(frame) or EMPTY,
        "mixed": mixed_table(frame) or EMPTY,
        "onnx": onnx_table(frame) or EMPTY,
    }


def _pattern(name: str) -> re.Pattern[str]:
    start, end = re.escape(f"<!-- report:{name} -->"), re.escape(f"<!-- /report:{name} -->")
    return re.compile(rf"({start}\n)(?:(.*?)\n)?({end})", re.DOTALL)  # the body may be empty


def fill(text: str, blocks: dict[str, str]) -> str:
    """``text`` (a README) with every block replaced; ``ValueError`` naming the blocks whose markers are missing."""
    missing = [name for name in blocks if not _pattern(name).search(text)]
    if missing:
        raise ValueError(
            f"the README has no block for {missing}; expected '<!-- report:NAME -->' and '<!-- /report:NAME -->' "
            "each on a line of its own around every generated table."
        )
    for name, body in blocks.items():
        text = _pattern(name).sub(lambda match, body=body: f"{match[1]}{body}\n{match[3]}", text, count=1)
    return text


def stale_blocks(text: str, blocks: dict[str, str]) -> list[str]:
    """Names of the blocks whose text in ``text`` differs from ``blocks`` (missing markers raise, as in ``fill``)."""
    filled = fill(text, blocks)
    return [name for name in blocks if _pattern(name).search(text)[2] != _pattern(name).search(filled)[2]]
