"""``python -m qexp.curves RUN_DIR --out reports/NAME``: learning curves of a training run.

Reads every ``csv/version_*/metrics.csv`` Lightning's CSV logger wrote under ``RUN_DIR`` (a run
resumed in later sessions adds a version each time), keeps one row per epoch (the newest), and
writes ``metrics.csv`` and ``learning_curves.png``: training loss, and validation accuracy of the
raw and EMA weights per epoch.
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


def plot_curves(metrics: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = metrics["epoch"] + 1
    loss_ax.plot(epochs, metrics["train/loss"], label="train loss (augmented batches)")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Training loss")
    for column, label in (("val/acc", "raw weights"), ("val/ema_acc", "EMA weights")):
        if column in metrics:
            acc_ax.plot(epochs, 100 * metrics[column], label=label)
    acc_ax.set(xlabel="epoch", ylabel="top-1 (%)", title="Validation accuracy (held-out training images)")
    low = 100 * metrics[[c for c in ("val/acc", "val/ema_acc") if c in metrics]].tail(50).min().min()
    acc_ax.set_ylim(max(0, low - 10), 100)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        metrics = epoch_metrics(args.run_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(args.out / "metrics.csv", index=False)
    plot_curves(metrics, args.out / "learning_curves.png")
    print(f"{len(metrics)} epochs -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
