"""``python -m qexp.report``: the command line, and ``report`` / ``report_from_csv`` that it runs."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from qexp.report.cells import collect, collect_sensitivity, read_results, read_sensitivity
from qexp.report.plots import plot, plot_sensitivity
from qexp.report.readme import fill, readme_blocks
from qexp.report.tables import results_markdown

USAGE = """python -m qexp.report SWEEP_DIR [...] --out multirun_reports/NAME [--readme README.md]
       python -m qexp.report --from-csv REPORT_DIR/results.csv --out REPORT_DIR [--readme README.md]"""


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


def report_from_csv(results: Path, out: Path, readme: Path | None = None) -> pd.DataFrame:
    """The report again from a ``results.csv`` (and the ``layer_sensitivity.csv`` beside it), without the sweeps."""
    frame = read_results(results)
    sensitivity = read_sensitivity(results.parent / "layer_sensitivity.csv")
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != results.parent.resolve():  # the report directory holds its data, whichever way it was made
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
    parser.add_argument("--from-csv", type=Path, help="a results.csv to report again, instead of sweep directories")
    parser.add_argument("--out", type=Path, required=True, help="report directory, e.g. multirun_reports/NAME")
    parser.add_argument("--readme", type=Path, help="a README whose <!-- report:NAME --> blocks are rewritten")
    args = parser.parse_args(argv)
    if bool(args.sweeps) == bool(args.from_csv):
        print("error: give sweep directories or --from-csv RESULTS_CSV, one of the two.", file=sys.stderr)
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
            frame = report_from_csv(args.from_csv, args.out, args.readme)
        else:
            frame = report(args.sweeps, args.out, args.readme)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = frame["status"].value_counts().to_dict()
    print(f"{len(frame)} cells {counts} -> {args.out}" + (f", {args.readme}" if args.readme else ""))
    return 0
