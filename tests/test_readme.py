"""The README's generated blocks agree with the committed report, and are filled in place."""

from pathlib import Path

import pytest

from qexp.report.cells import read_results
from qexp.report.readme import fill, readme_blocks, stale_blocks

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "multirun_reports" / "resnet20_ptq"


def test_the_readme_tables_are_what_the_committed_results_csv_gives():
    blocks = readme_blocks(read_results(REPORT / "results.csv"), "multirun_reports/resnet20_ptq/glance.png")
    stale = stale_blocks((ROOT / "README.md").read_text(), blocks)
    assert stale == [], (
        f"README blocks {stale} disagree with {REPORT.relative_to(ROOT)}/results.csv; regenerate them with "
        "python -m qexp.report --from-csv multirun_reports/resnet20_ptq/results.csv "
        "--out multirun_reports/resnet20_ptq --readme README.md"
    )
    assert "| ours, round-to-nearest · mse | W4A4 | 80.89 | -6.05, loss | 141 | 137 |" in blocks["glance"]
    brecq = "| + BRECQ+LSQ+QDrop 2000 steps |  |  | **84.60 (-2.34)** | 64.12 (-22.82) | 37.94 (-49.00) |"
    qat = "| + QAT |  |  | 84.41 (-2.53) | **79.64 (-7.30)** |"
    assert brecq in blocks["recovery"] and qat in blocks["recovery"]
    assert "| + BRECQ+LSQ+QDrop 8000 steps |  |  |  | 72.19 (-14.75) |  | 2099 |" in blocks["recovery"]
    assert "| ours · mse · shared grids · W8 | W8A8 | 86.93 | 86.93 | 99.28 | 28 | 13 |" in blocks["onnx"]


def test_fill_replaces_only_between_the_markers():
    a, b = "<!-- report:a -->\n", "<!-- report:b -->\n"
    text = f"intro\n{a}<!-- /report:a -->\nmiddle\n{b}old\nlines\n<!-- /report:b -->\nend"
    filled = fill(text, {"a": "| x |", "b": "new"})
    assert filled == f"intro\n{a}| x |\n<!-- /report:a -->\nmiddle\n{b}new\n<!-- /report:b -->\nend"
    assert fill(filled, {"a": "| x |", "b": "new"}) == filled
    assert stale_blocks(text, {"a": "| x |", "b": "old\nlines"}) == ["a"]
    with pytest.raises(ValueError, match=r"the README has no block for \['c'\]"):
        fill(text, {"c": "text"})
