"""``python -m qexp.report``: the command line, and ``report`` / ``report_from_csv`` that it runs."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

from qexp.report.cells import (
    collect,
    collect_sensitivity,
    merge,
    newest_per_probe,
    read_results,
    read_sensitivity,
)
from qexp.report.plots import plot, plot_sensitivity
from qexp.report.readme import fill_pages, markdown_pages, page_blocks
from qexp.report.tables import results_markdown

USAGE = """python -m qexp.report SWEEP_DIR [...] --out multirun_reports/NAME [--readme PAGE ...] [--baseline CSV]
                                 [--foreign CSV]
       python -m qexp.report --from-csv REPORT_DIR/results.csv [SWEEP_DIR ...] --out REPORT_DIR [--readme PAGE ...]
PAGE: a Markdown file or a folder of them, e.g. --readme README.md docs
--baseline CSV: the results.csv of the checkpoint this one replaced (its headline numbers beside these)
--foreign CSV: the results.csv of the same recipes on another model (its cells beside these: the foreign block)"""


def report(
    directories: list[Path],
    out: Path,
    pages: list[Path] | None = None,
    baseline: pd.DataFrame | None = None,
    foreign: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Collect the sweeps' cells into ``out``: ``results.csv`` (every field), ``results.md``, the plots.

    ``pages``: Markdown files whose generated blocks are rewritten (``write``), with ``baseline``'s headline
    cells and ``foreign``'s cells beside these when given.
    """
    frame = collect(directories)
    sensitivity = collect_sensitivity(directories)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    if len(sensitivity):
        sensitivity.to_csv(out / "layer_sensitivity.csv", index=False)
    write(frame, sensitivity, out, pages, baseline, foreign)
    return frame


def report_from_csv(
    results: Path,
    out: Path,
    pages: list[Path] | None = None,
    sweeps: list[Path] | None = None,
    baseline: pd.DataFrame | None = None,
    foreign: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The report again from a ``results.csv`` (and the ``layer_sensitivity.csv`` beside it), without its sweeps.

    ``sweeps`` adds the cells of newer sweep directories to the committed ones (``merge``: one row
    per cell, the newest wins, all of one checkpoint), e.g. QAT cells run after the grid.
    """
    frame = read_results(results)
    sensitivity = read_sensitivity(results.parent / "layer_sensitivity.csv")
    if sweeps:
        frame = merge(frame, collect(sweeps))
        sensitivity = newest_per_probe(pd.concat([sensitivity, collect_sensitivity(sweeps)], ignore_index=True))
    out.mkdir(parents=True, exist_ok=True)
    if sweeps:  # the report directory holds its data, whichever way it was made
        frame.to_csv(out / "results.csv", index=False)
        if len(sensitivity):
            sensitivity.to_csv(out / "layer_sensitivity.csv", index=False)
    elif out.resolve() != results.parent.resolve():
        shutil.copyfile(results, out / "results.csv")
        if len(sensitivity):
            shutil.copyfile(results.parent / "layer_sensitivity.csv", out / "layer_sensitivity.csv")
    write(frame, sensitivity, out, pages, baseline, foreign)
    return frame


def write(
    frame: pd.DataFrame,
    sensitivity: pd.DataFrame,
    out: Path,
    pages: list[Path] | None,
    baseline: pd.DataFrame | None = None,
    foreign: pd.DataFrame | None = None,
) -> None:
    """``results.md`` and the plots into ``out``; the generated blocks of ``pages`` when given.

    Every page gets the blocks it has markers for; all are filled before any is written, so a set of
    pages where some block has no place (``ValueError``) changes none of them.
    """
    filled = {}
    if pages:
        texts = {page: page.read_text() for page in pages}
        filled = fill_pages(texts, page_blocks(frame, out, baseline, foreign))
        filled = {page: text for page, text in filled.items() if text != texts[page]}
    (out / "results.md").write_text(results_markdown(frame, sensitivity))
    plot(frame, out)
    if len(sensitivity):
        plot_sensitivity(sensitivity, out)
    for page, text in filled.items():
        page.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tables, plots and the README's generated blocks from quantization sweeps.", usage=USAGE
    )
    parser.add_argument("sweeps", nargs="*", type=Path, help="Hydra multirun directories")
    parser.add_argument(
        "--from-csv", type=Path, help="a results.csv to report again; sweep directories beside it add their cells"
    )
    parser.add_argument("--out", type=Path, required=True, help="report directory, e.g. multirun_reports/NAME")
    parser.add_argument(
        "--readme",
        type=Path,
        nargs="+",
        help="Markdown files, or folders of them, whose <!-- report:NAME --> blocks are rewritten (README.md docs)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="the results.csv of the checkpoint this one replaced: its headline numbers beside these (--readme)",
    )
    parser.add_argument(
        "--foreign",
        type=Path,
        help="the results.csv of the same recipes run on another model (make foreign): its cells beside these",
    )
    args = parser.parse_args(argv)
    if not args.sweeps and not args.from_csv:
        print("error: give sweep directories, --from-csv RESULTS_CSV, or both.", file=sys.stderr)
        return 2
    missing = [str(d) for d in args.sweeps if not d.is_dir()]
    if missing:
        print(f"error: sweep directories {missing} do not exist; expected Hydra multirun directories.", file=sys.stderr)
        return 2
    try:
        pages = markdown_pages(args.readme) if args.readme else None
        baseline = read_results(args.baseline) if args.baseline else None
        foreign = read_results(args.foreign) if args.foreign else None
        if args.from_csv:
            frame = report_from_csv(args.from_csv, args.out, pages, args.sweeps, baseline, foreign)
        else:
            frame = report(args.sweeps, args.out, pages, baseline, foreign)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = frame["status"].value_counts().to_dict()
    print(f"{len(frame)} cells {counts} -> {args.out}" + "".join(f", {page}" for page in pages or []))
    return 0
