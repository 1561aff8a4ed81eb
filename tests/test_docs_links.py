"""Every relative link in README.md and docs/*.md points at a file that exists, and at a heading that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images in ``text``'s prose."""
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in ``text``; a repeated heading gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """The links of ``page`` whose file, or whose heading in a Markdown file, does not exist."""
    broken = []
    for target in links(page.read_text()):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target} (no heading with that anchor in {file.name})")
    return broken


def test_the_docs_pages_exist_and_the_readme_links_every_one():
    readme = set(links((ROOT / "README.md").read_text()))
    assert len(PAGES) > 1
    unlinked = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in readme]
    assert unlinked == [], f"docs pages {unlinked} are not linked from README.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path):
    assert broken_links(page) == []


def test_links_and_anchors_are_read_as_github_renders_them(tmp_path: Path):
    assert slug("Our PTQ (`quant=custom_ptq`)") == "our-ptq-quantcustom_ptq"
    assert slug("Dead channels: the bug, and its cost") == "dead-channels-the-bug-and-its-cost"
    assert anchors("# A\n\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
    text = "[x](a.md#b) ![y](img.png) `[no](link.md)`\n```\n[no](code.md)\n```\n[web](https://example.com)"
    assert links(text) == ["a.md#b", "img.png", "https://example.com"]
    (tmp_path / "a.md").write_text("# B\n")
    (tmp_path / "page.md").write_text("[ok](a.md#b) [gone](missing.md) [bad anchor](a.md#c) [self](#d)\n# D\n")
    assert broken_links(tmp_path / "page.md") == [
        "missing.md (no such file)",
        "a.md#c (no heading with that anchor in a.md)",
    ]
