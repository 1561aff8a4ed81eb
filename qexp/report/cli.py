"""``python -m qexp.report``: the command line, and ``report`` / ``report_from_csv`` that it runs."""

from __future__ import annotations

import argparse
import os
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
from qexp.report.readme import fill, readme_blocks
from qexp.report.tables import results_markdown

USAGE = """python -m qexp.report SWEEP_DIR [...] --out multirun_reports/NAME [--readme README.md]
       python -m qexp.report --from-csv REPORT_DIR/results.csv [SWEEP_DIR ...] --out REPORT_DIR [--readme README.md]"""


def report(directories: list[Path], out: Path, readme: Path | None = None) -> pd.DataFrame:
    """Collect the sweeps' cells into ``out``: ``results.csv`` (every field), ``results.md``, the plots."""
    frame = collect(directories)
    sensitivity = collect_sensitivity(directories)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    if len(sensitivity):
        sensitivity.to_csv(out / "layer_sensitivity.csv", index=False)
    write(frame, sensitivity, out, readme)
    return frame


def report_from_csv(
    results: Path, out: Path, readme: Path | None = None, sweeps: list[Path] | None = None
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
    write(frame, sensitivity, out, readme)
    return frame


def write(frame: pd.DataFrame, sensitivity: pd.DataFrame, out: Path, readme: Path | None) -> None:
    """``results.md`` and the plots into ``out``; the README's generated blocks when ``readme`` is given."""
    (out / "results.md").write_text(results_markdown(frame, sensitivity))
    plot(frame, out)
    if len(sensitivity):
        plot_sensitivity(sensitivity, out)
    if readme is not None:
        image = Path(os.path.relpath(out / "glance.png", readme.parent)).as_posix()
        readme.write_text(fill(readme.read_text(), readme_blocks(frame, image)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tables, plots and the README's generated blocks from quantization sweeps.", usage=USAGE
    )
    parser.add_argument("sweeps", nargs="*", type=Path, help="Hydra multirun directories")
    parser.add_argument(
        "--from-csv", type=Path, help="a results.csv to report again; sweep directories beside it add their cells"
    )
    parser.add_argument("--out", type=Path, required=True, help="report directory, e.g. multirun_reports/NAME")
    parser.add_argument("--readme", type=Path, help="a README whose <!-- report:NAME --> blocks are rewritten")
    args = parser.parse_args(argv)
    if not args.sweeps and not args.from_csv:
        print("error: give sweep directories, --from-csv RESULTS_CSV, or both.", file=sys.stderr)
        return 2
    missing = [str(d) for d in args.sweeps if not d.is_dir()]
    if missing:
        print(f"error: sweep directories {missing} do not exist; expected Hydra multirun directories.", file=sys.stderr)
        return 2
    if args.readme is not None and not args.readme.is_file():
        print(f"error: --readme {str(args.readme)!r} is not a file.", file=sys.stderr)
        return 2
    try:
        if args.from_csv:
            frame = report_from_csv(args.from_csv, args.out, args.readme, args.sweeps)
        else:
            frame = report(args.sweeps, args.out, args.readme)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = frame["status"].value_counts().to_dict()
    print(f"{len(frame)} cells {counts} -> {args.out}" + (f", {args.readme}" if args.readme else ""))
    return 0
