"""``python -m qexp.training.curves RUN_DIR [RUN_DIR ...] --out reports/NAME``: learning curves of training runs.

Reads every ``csv/version_*/metrics.csv`` Lightning's CSV logger wrote under each ``RUN_DIR`` (a
run resumed in later sessions adds a version each time), keeps one row per epoch (the newest), and
writes ``metrics.csv`` (the first run's) and ``learning_curves.png``: training loss, and validation
accuracy of the raw and EMA weights per epoch. Further runs are drawn in the same axes, named by
``--label`` (default: the directory's name), so that two recipes or two networks compare at a glance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def epoch_metrics(run_dir: Path) -> pd.DataFrame:
    """One row per epoch with the epoch-level metrics of all logged versions."""
    files = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise ValueError(
            f"no csv/version_*/metrics.csv under {str(run_dir)!r}; expected a qexp.train output directory."
        )
    frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    per_epoch = frame.groupby("epoch").agg("last").reset_index()
    return per_epoch.drop(columns=[c for c in ("step",) if c in per_epoch])


def plot_curves(runs: dict[str, pd.DataFrame], path: Path) -> None:
    """Training loss and validation top-1 per epoch, one colour per run, raw weights dashed, EMA solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    lows = []
    for (label, metrics), colour in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        name = f"{label}: " if len(runs) > 1 else ""
        epochs = metrics["epoch"] + 1
        loss_ax.plot(epochs, metrics["train/loss"], color=colour, label=f"{name}train loss (augmented batches)")
        for column, weights, style in (("val/acc", "raw weights", "--"), ("val/ema_acc", "EMA weights", "-")):
            if column in metrics:
                acc_ax.plot(epochs, 100 * metrics[column], style, color=colour, label=f"{name}{weights}")
        columns = [c for c in ("val/acc", "val/ema_acc") if c in metrics]
        lows.append(100 * metrics[columns].tail(50).min().min())
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Training loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 (%)", title="Validation accuracy (held-out training images)")
    acc_ax.set_ylim(max(0, min(lows) - 10), 100)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--label", action="append", default=[], help="a name per RUN_DIR, in order")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.run_dirs):
        print(
            f"error: {len(args.label)} --label values for {len(args.run_dirs)} run directories; give one per "
            "directory or none.",
            file=sys.stderr,
        )
        return 2
    labels = args.label or [d.name for d in args.run_dirs]
    try:
        runs = {label: epoch_metrics(d) for label, d in zip(labels, args.run_dirs, strict=True)}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    first = next(iter(runs.values()))
    first.to_csv(args.out / "metrics.csv", index=False)
    plot_curves(runs, args.out / "learning_curves.png")
    print(f"{len(first)} epochs -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
