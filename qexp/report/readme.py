"""The README's and docs' generated blocks: tables written by the report between marker comments, never by hand.

A block is ``<!-- report:NAME -->`` ... ``<!-- /report:NAME -->`` in a Markdown page; everything
between the markers is replaced by what ``readme_blocks`` makes of the cells, the rest of the
page is left as it is. Each block may live in any of the pages (the README, a page of ``docs/``);
``fill_pages`` fills each page with the blocks it has markers for and refuses a set of pages where
some block has no place. A test compares the committed pages with the blocks made from the
committed ``results.csv``, so no page can drift from the report.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from qexp.report.cells import recipes
from qexp.report.selection import default_draw, fp32_cell
from qexp.report.tables import (
    baseline_table,
    comparison_table,
    foreign_table,
    glance_table,
    mixed_table,
    onnx_table,
    recovery_table,
    size_table,
    spread_table,
)

EMPTY = "No cells of this kind in the report."


BASELINE_NAMES = ("narrow network (16 live residual channels)", "full-width ResNet20 (this study)")


def readme_blocks(
    frame: pd.DataFrame,
    glance_image: str,
    baseline: pd.DataFrame | None = None,
    foreign: pd.DataFrame | None = None,
) -> dict[str, str]:
    """The text of each generated block, by name; ``glance_image``: the path of ``glance.png`` from the page.

    ``baseline``: the cells of the checkpoint this study replaced, whose headline numbers the ``baseline``
    block sets beside these (no such block without it). ``foreign``: the cells of another model the recipes
    were run on unchanged, which the ``foreign`` block sets beside this study's (none without it).
    """
    everything, frame = frame, default_draw(frame)
    fp32 = fp32_cell(frame)
    caption = "Test top-1 (%) and the change against FP32"
    caption += f" ({fp32['top1']:.2f} %):" if fp32 is not None else ":"
    uniform = frame[recipes(frame).isna()]  # cells with a recipe are in the recovery block
    blocks = {
        "glance": f"{glance_table(everything)}\n\n![results at a glance]({glance_image})",
        "results": f"{caption}\n\n{comparison_table(uniform)}",
        "sizes": size_table(frame) or EMPTY,
        "recovery": recovery_table(frame) or EMPTY,
        "mixed": mixed_table(frame) or EMPTY,
        "onnx": onnx_table(frame) or EMPTY,
        "spread": spread_table(everything) or EMPTY,
    }
    if baseline is not None:
        blocks["baseline"] = baseline_table(baseline, everything, BASELINE_NAMES)
    if foreign is not None:
        blocks["foreign"] = foreign_table(foreign, everything) or EMPTY
    return blocks


def page_blocks(
    frame: pd.DataFrame,
    report_dir: Path,
    baseline: pd.DataFrame | None = None,
    foreign: pd.DataFrame | None = None,
) -> Callable[[Path], dict[str, str]]:
    """``blocks_for(page)`` for ``fill_pages``: ``readme_blocks`` with the figure's path relative to the page's folder.

    The blocks are made once per folder: only the figure's path differs between pages.
    """
    by_image = functools.cache(lambda image: readme_blocks(frame, image, baseline, foreign))
    return lambda page: by_image(Path(os.path.relpath(report_dir / "glance.png", page.parent)).as_posix())


def markdown_pages(paths: Iterable[Path]) -> list[Path]:
    """The pages ``paths`` name, each once: a file as it is, a folder as the ``*.md`` files directly in it (sorted).

    ``ValueError`` for a path that is neither a file nor a folder with ``*.md`` files.
    """
    pages = []
    for path in paths:
        found = [path] if path.is_file() else sorted(path.glob("*.md")) if path.is_dir() else []
        if not found:
            raise ValueError(
                f"--readme {str(path)!r} is neither a file nor a folder of *.md pages; expected e.g. README.md docs."
            )
        pages += [page for page in found if page not in pages]
    return pages


def _pattern(name: str) -> re.Pattern[str]:
    start, end = re.escape(f"<!-- report:{name} -->"), re.escape(f"<!-- /report:{name} -->")
    return re.compile(rf"({start}\n)(?:(.*?)\n)?({end})", re.DOTALL)  # the body may be empty


def fill(text: str, blocks: dict[str, str]) -> str:
    """``text`` (a page) with every block replaced; ``ValueError`` naming the blocks whose markers are missing."""
    missing = [name for name in blocks if not _pattern(name).search(text)]
    if missing:
        raise ValueError(
            f"the page has no block for {missing}; expected '<!-- report:NAME -->' and '<!-- /report:NAME -->' "
            "each on a line of its own around every generated table."
        )
    for name, body in blocks.items():
        text = _pattern(name).sub(lambda match, body=body: f"{match[1]}{body}\n{match[3]}", text, count=1)
    return text


def blocks_in(text: str, names: Iterable[str]) -> list[str]:
    """Which of ``names`` have their markers in ``text``."""
    return [name for name in names if _pattern(name).search(text)]


def fill_pages(texts: dict[Path, str], blocks_for: Callable[[Path], dict[str, str]]) -> dict[Path, str]:
    """Every page's text with the blocks it has markers for replaced (``blocks_for(page)``: the blocks, by name).

    A page without markers comes back unchanged; ``ValueError`` naming the blocks that no page has,
    so a block cannot silently drop out of every page.
    """
    filled, placed, names = {}, set(), set()
    for page, text in texts.items():
        blocks = blocks_for(page)
        names |= set(blocks)
        present = blocks_in(text, blocks)
        placed |= set(present)
        filled[page] = fill(text, {name: blocks[name] for name in present})
    homeless = sorted(names - placed)
    if homeless:
        raise ValueError(
            f"no page has a block for {homeless}; expected '<!-- report:NAME -->' and '<!-- /report:NAME -->' "
            f"each on a line of its own in one of {[str(page) for page in texts]}."
        )
    return filled


def stale_pages(texts: dict[Path, str], blocks_for: Callable[[Path], dict[str, str]]) -> dict[Path, list[str]]:
    """Per page whose generated text differs from ``blocks_for(page)``, the names of its stale blocks.

    ``ValueError`` as in ``fill_pages`` when a block has no page.
    """
    fill_pages(texts, blocks_for)  # every block has a page, or ValueError
    stale = {}
    for page, text in texts.items():
        blocks = blocks_for(page)
        names = stale_blocks(text, {name: blocks[name] for name in blocks_in(text, blocks)})
        if names:
            stale[page] = names
    return stale


def stale_blocks(text: str, blocks: dict[str, str]) -> list[str]:
    """Names of the blocks whose text in ``text`` differs from ``blocks`` (missing markers raise, as in ``fill``)."""
    filled = fill(text, blocks)
    return [name for name in blocks if _pattern(name).search(text)[2] != _pattern(name).search(filled)[2]]
