"""``python -m qexp.report.recipes WEIGHTS... --out reports/recipes``: the table of training recipes compared on
validation.

Every recipe choice (cutout, label smoothing, weight decay, teacher, T and alpha, length) is made
on proxy runs scored on the 5 000 held-out training images. This reads the weight files those
runs exported (their metadata holds the resolved config, the validation accuracies and the
training time) and writes ``recipes.csv`` and ``recipes.md``, one row per run. Test accuracy is
left out on purpose: a table that recipes are chosen from must not show the test split.
With ``--readme docs/training.md`` the table also replaces that page's ``<!-- report:recipes -->``
block, so the docs show what the proxies measured, never a hand copy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from qexp.errors import QexpError
from qexp.report.readme import fill


def recipe_row(path: Path) -> dict[str, Any]:
    """One table row from a weight file written by ``python -m qexp.train``."""
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
        missing = [key for key in ("config", "epochs", "train_seconds") if key not in meta]
        if missing:
            raise KeyError(", ".join(missing))
    except Exception as error:  # missing, truncated or foreign files, or metadata without a recipe
        raise QexpError(
            f"{str(path)!r} could not be read as a qexp weight file ({type(error).__name__}); "
            "expected the weights.pt that python -m qexp.train exports."
        ) from None
    cfg = OmegaConf.create(meta["config"])
    teacher = meta.get("teacher") or {}
    val = meta.get("val_top1") or {}
    return {
        "run": path.parent.name if path.name == "weights.pt" else path.stem,
        "model": str(cfg.model._target_).rsplit(".", 1)[-1],
        "train_images": meta.get("train_images"),
        "epochs": meta["epochs"],
        "cutout": cfg.data.cutout_size,
        "label_smoothing": cfg.optim.label_smoothing,
        "weight_decay": cfg.optim.weight_decay,
        "ema": cfg.optim.ema_decay,
        "teacher": teacher.get("arch"),
        "teacher_val_top1": teacher.get("val_top1"),
        "alpha": teacher.get("alpha"),
        "temperature": teacher.get("temperature"),
        "val_top1": val.get("val/acc"),
        "val_top1_ema": val.get("val/ema_acc"),
        "minutes": round(meta["train_seconds"] / 60, 1),
        "command": meta.get("command"),
    }


PERCENT_COLUMNS = ("teacher_val_top1", "val_top1", "val_top1_ema")


def cell(column: str, value: Any) -> str:
    """A table cell: accuracies with two decimals, settings as written (5e-4 stays 0.0005), blanks for None."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if column in PERCENT_COLUMNS:
        return f"{value:.2f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipes_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, best validation accuracy first, blanks for what a run did not have."""
    shown = table.drop(columns=["command"]).copy()
    shown["best_val"] = shown[["val_top1", "val_top1_ema"]].max(axis=1)
    shown = shown.sort_values("best_val", ascending=False).drop(columns=["best_val"])
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "---|" * len(shown.columns)
    rows = [
        "| " + " | ".join(cell(c, v) for c, v in zip(shown.columns, row, strict=True)) + " |"
        for row in shown.itertuples(index=False)
    ]
    commands = [f"- `{r.run}`: `{r.command}`" for r in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows, "", "Commands:", "", *commands, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, nargs="+", help="weight files exported by python -m qexp.train")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--readme", type=Path, help="a page (docs/training.md) whose <!-- report:recipes --> block gets the table"
    )
    args = parser.parse_args(argv)
    try:
        table = pd.DataFrame([recipe_row(path) for path in args.weights])
    except QexpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    markdown = recipes_markdown(table)
    readme = None
    if args.readme:  # filled before anything is written, so a README without the block changes nothing
        try:
            readme = fill(args.readme.read_text(), {"recipes": markdown.rstrip("\n")})
        except (OSError, ValueError) as error:
            print(f"error: --readme {str(args.readme)!r}: {error}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "recipes.csv", index=False)
    (args.out / "recipes.md").write_text(markdown)
    if readme is not None:
        args.readme.write_text(readme)
    print(f"{len(table)} runs -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
