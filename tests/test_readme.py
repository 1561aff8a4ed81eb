"""The generated blocks of README.md and docs/ agree with the committed report, and are filled in place."""

import json
from pathlib import Path

import pytest

from qexp.report import main
from qexp.report.cells import read_results
from qexp.report.readme import fill, fill_pages, markdown_pages, page_blocks, stale_blocks, stale_pages

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "multirun_reports" / "resnet20_ptq"
NARROW = ROOT / "multirun_reports" / "resnet20_narrow" / "results.csv"  # the checkpoint the study replaced
FOREIGN = ROOT / "multirun_reports" / "foreign_resnet20" / "results.csv"  # the recipes on akamaster's ResNet20
PAGES = [ROOT / "README.md", ROOT / "docs"]


def test_the_pages_tables_are_what_the_committed_results_csv_gives():
    frame = read_results(REPORT / "results.csv")
    pages = markdown_pages(PAGES)
    assert ROOT / "docs" / "recovery.md" in pages and len(pages) > 2
    blocks_for = page_blocks(frame, REPORT, read_results(NARROW), read_results(FOREIGN))
    stale = stale_pages({page: page.read_text() for page in pages}, blocks_for)
    assert stale == {}, (
        f"generated blocks { {str(page.relative_to(ROOT)): names for page, names in stale.items()} } disagree with "
        f"{REPORT.relative_to(ROOT)}/results.csv; regenerate them with "
        "python -m qexp.report --from-csv multirun_reports/resnet20_ptq/results.csv "
        "--out multirun_reports/resnet20_ptq --readme README.md docs "
        "--baseline multirun_reports/resnet20_narrow/results.csv "
        "--foreign multirun_reports/foreign_resnet20/results.csv"
    )
    blocks = blocks_for(ROOT / "README.md")
    assert "![results at a glance](multirun_reports/resnet20_ptq/glance.png)" in blocks["glance"]
    in_docs = blocks_for(ROOT / "docs" / "page.md")["glance"]  # a page links the figure from its own folder
    assert "![results at a glance](../multirun_reports/resnet20_ptq/glance.png)" in in_docs
    w4a4 = "| ours, round-to-nearest · mse | W4A4 | 84.50 | -4.95, loss | 84.72 ± 0.31 (3) | 87.91 ± 1.02 | 141 | 137 |"
    assert w4a4 in blocks["glance"]  # with the spread over three calibration draws and the original images beside it
    assert "| FP32 | 86.94 | 89.45 |" in blocks["baseline"]  # the narrow network beside the full-width one
    assert "| W4A4, round-to-nearest | 80.89 (-6.05) · mse | 84.50 (-4.95) · mse |" in blocks["baseline"]
    theirs = "| `resnet20-12fca82f.th` · CIFAR-10 original test images (first 1 017) | 91.64 | 80.14 ± 1.25 (-11.50) |"
    assert theirs in blocks["foreign"]  # akamaster's model on its own domain, beside ours


def test_fill_replaces_only_between_the_markers():
    a, b = "<!-- report:a -->\n", "<!-- report:b -->\n"
    text = f"intro\n{a}<!-- /report:a -->\nmiddle\n{b}old\nlines\n<!-- /report:b -->\nend"
    filled = fill(text, {"a": "| x |", "b": "new"})
    assert filled == f"intro\n{a}| x |\n<!-- /report:a -->\nmiddle\n{b}new\n<!-- /report:b -->\nend"
    assert fill(filled, {"a": "| x |", "b": "new"}) == filled
    assert stale_blocks(text, {"a": "| x |", "b": "old\nlines"}) == ["a"]
    with pytest.raises(ValueError, match=r"the page has no block for \['c'\]"):
        fill(text, {"c": "text"})


def test_each_page_gets_the_blocks_it_has_and_every_block_needs_a_page():
    texts = {
        Path("README.md"): "<!-- report:a -->\nold\n<!-- /report:a -->\n",
        Path("docs/b.md"): "# b\n<!-- report:b -->\n<!-- /report:b -->\n",
        Path("docs/c.md"): "no blocks here\n",
    }
    blocks = {"a": "A", "b": "B"}
    filled = fill_pages(texts, lambda page: blocks)
    assert filled[Path("README.md")] == "<!-- report:a -->\nA\n<!-- /report:a -->\n"
    assert filled[Path("docs/b.md")] == "# b\n<!-- report:b -->\nB\n<!-- /report:b -->\n"
    assert filled[Path("docs/c.md")] == texts[Path("docs/c.md")]
    assert stale_pages(texts, lambda page: blocks) == {Path("README.md"): ["a"], Path("docs/b.md"): ["b"]}
    assert stale_pages(filled, lambda page: blocks) == {}
    with pytest.raises(ValueError, match=r"no page has a block for \['c'\]"):
        fill_pages(texts, lambda page: {**blocks, "c": "C"})


def test_markdown_pages_takes_files_and_folders(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    for name in ("b.md", "a.md", "notes.txt"):
        (tmp_path / "docs" / name).write_text("")
    (tmp_path / "README.md").write_text("")
    pages = markdown_pages([tmp_path / "README.md", tmp_path / "docs"])
    assert pages == [tmp_path / "README.md", tmp_path / "docs" / "a.md", tmp_path / "docs" / "b.md"]
    with pytest.raises(ValueError, match="is neither a file nor a folder of"):
        markdown_pages([tmp_path / "missing.md"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is neither a file nor a folder of"):
        markdown_pages([tmp_path / "empty"])


def cell(root: Path, name: str, **fields) -> None:
    record = {
        "quant": "custom_ptq", "w_bits": 8, "a_bits": 8, "bits": 8, "observer": "minmax",
        "granularity": "per_channel", "first_last_bits": None, "status": "ok", "reason": "", "top1": 90.0,
        "fp32_top1": 91.0, "size_bytes": 80_000, "fp32_size_bytes": 1_100_000, "calib_images": 1024,
        "seconds": 1.0, "checkpoint": "w.pt", "data": "synthetic", "finished_at": f"2026-01-01T00:00:0{name}",
    }  # fmt: skip
    record.update(fields)
    (root / name).mkdir(parents=True)
    (root / name / "result.json").write_text(json.dumps(record))


def test_the_command_fills_the_readme_and_a_folder_of_pages(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    cell(sweep, "0", quant="none", w_bits=32, a_bits=32, bits=32, observer="none", top1=91.0)
    cell(sweep, "1")
    docs = tmp_path / "docs"
    docs.mkdir()
    readme = tmp_path / "README.md"
    blocks = ("glance", "results", "sizes", "spread")
    empty = "".join(f"<!-- report:{name} -->\n<!-- /report:{name} -->\n" for name in blocks)
    readme.write_text(f"# qexp\n{empty}")
    (docs / "recovery.md").write_text("<!-- report:recovery -->\n<!-- /report:recovery -->\n")
    (docs / "deployment.md").write_text("<!-- report:onnx -->\nstale\n<!-- /report:onnx -->\n")
    (docs / "other.md").write_text("<!-- report:mixed -->\n<!-- /report:mixed -->\n")
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--readme", str(readme), str(docs)]) == 0
    assert "![results at a glance](report/glance.png)" in readme.read_text()
    assert "| ours · minmax |  | 90.00 (-1.00) |" in readme.read_text()
    assert "stale" not in (docs / "deployment.md").read_text()

    (docs / "other.md").write_text("the mixed block is gone\n")
    before = readme.read_text()
    assert main([str(sweep), "--out", str(out), "--readme", str(readme), str(docs)]) == 2
    assert "no page has a block for ['mixed']" in capsys.readouterr().err
    assert readme.read_text() == before  # nothing is written when a block has no page
    assert main([str(sweep), "--out", str(out), "--readme", str(tmp_path / "nowhere")]) == 2
    assert "is neither a file nor a folder" in capsys.readouterr().err
