"""``python -m qexp.report SWEEP_DIR [...] --out multirun_reports/NAME``: tables and plots from sweeps.

Collects every ``result.json`` below the given directories (a cell run twice counts once: the
newest wins), and writes ``results.csv`` (every field), ``results.md`` (the comparison tables)
and PNG plots. Failed and unsupported cells are shown as such. Running it again on the same
inputs rewrites the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

CELL = [
    "quant", "flow", "w_bits", "a_bits", "observer", "granularity", "first_last_bits", "recovery", "average_bits",
    "data", "checkpoint",
]  # fmt: skip
BITS = [16, 8, 4, 2]
SENSITIVITY_SETTING = ["observer", "granularity", "recovery", "checkpoint", "data"]
METHOD_NAMES = {"none": "FP32", "custom_ptq": "ours", "torch_ptq": "PyTorch"}


def collect(directories: list[Path]) -> pd.DataFrame:
    """One row per distinct cell (the newest ``finished_at`` wins), sorted for reading."""
    rows = []
    for directory in directories:
        for path in sorted(directory.rglob("result.json")):
            record = json.loads(path.read_text())
            record["path"] = str(path.parent)
            overrides = path.parent / ".hydra" / "overrides.yaml"
            record["overrides"] = overrides.read_text().strip() if overrides.is_file() else ""
            record["config"] = json.dumps(record.get("config", {}), sort_keys=True)
            rows.append(record)
    if not rows:
        raise ValueError(f"no result.json below {[str(d) for d in directories]}; expected Hydra sweep directories.")
    frame = pd.DataFrame(rows).reindex(columns=sorted({*CELL, "finished_at", *pd.DataFrame(rows).columns}))
    for column in CELL:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame = frame.sort_values("finished_at").drop_duplicates(subset=CELL, keep="last")
    return frame.sort_values(["quant", "observer", "w_bits", "a_bits"], ascending=[True, True, False, False])


def variant(row: pd.Series) -> str:
    """Row label of the comparison table: method, observer and what differs from WbAb."""
    if row["quant"] == "torch_ptq" and row["w_bits"] == 16 and row.get("flow") != "pt2e":
        return "PyTorch · float16"
    method = METHOD_NAMES.get(row["quant"], row["quant"])
    if row.get("flow") == "pt2e":
        method += " pt2e"
    label = f"{method} · {row['observer']}"
    if row["a_bits"] != row["w_bits"]:
        label += f" · A{row['a_bits']}"
    if row.get("first_last_bits") not in (None, "") and not pd.isna(row.get("first_last_bits")):
        label += f" · first/last {int(row['first_last_bits'])} bit"
    if row.get("granularity") == "per_tensor":
        label += " · per-tensor W"
    if isinstance(row.get("recovery"), str):
        label += f" · {row['recovery']}"
    if not pd.isna(row.get("average_bits")):
        label += f" · mixed {row['average_bits']:g} bits/weight"
    return label


def cell_text(row: pd.Series, fp32: float | None) -> str:
    if row["status"] != "ok":
        return row["status"]
    text = f"{row['top1']:.2f}"
    if fp32 is not None:
        text += f" ({row['top1'] - fp32:+.2f})"
    return text


def comparison_table(frame: pd.DataFrame, value: str = "top1") -> str:
    """Markdown: rows method x observer (x variant), columns weight bits."""
    fp32_rows = frame[(frame["quant"] == "none") & (frame["status"] == "ok")]
    fp32 = float(fp32_rows["top1"].iloc[0]) if len(fp32_rows) else None
    quantized = frame[(frame["quant"] != "none") & frame["average_bits"].isna()].copy()
    quantized["variant"] = quantized.apply(variant, axis=1)
    header = "| method · observer | " + " | ".join(f"W{b}" for b in BITS) + " |"
    lines = [header, "|" + "---|" * (len(BITS) + 1)]
    for label, group in quantized.groupby("variant", sort=False):
        cells = []
        for bits in BITS:
            match = group[group["w_bits"] == bits]
            if match.empty:
                cells.append("")
            elif value == "top1":
                cells.append(cell_text(match.iloc[0], fp32))
            else:
                row = match.iloc[0]
                cells.append(f"{row['size_bytes'] / 1024:.0f}" if row["status"] == "ok" else row["status"])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mixed_table(frame: pd.DataFrame) -> str:
    """Markdown: one row per mixed-precision cell, with how many layers got each weight width."""
    lines = [
        "| observer · recovery | budget (bits/weight) | activations | weight widths (layers) | top-1 | size (KiB) |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in frame.iterrows():
        layer_bits = row.get("layer_bits") if isinstance(row.get("layer_bits"), dict) else {}
        widths = pd.Series([bits[0] for bits in layer_bits.values()]).value_counts()
        spread = ", ".join(f"{count}× {bits}" for bits, count in sorted(widths.items(), reverse=True))
        label = row["observer"] + (f" · {row['recovery']}" if isinstance(row.get("recovery"), str) else "")
        top1 = f"{row['top1']:.2f}" if row["status"] == "ok" else row["status"]
        size = f"{row['size_bytes'] / 1024:.0f}" if row["status"] == "ok" else ""
        lines.append(f"| {label} | {row['average_bits']:g} | A{row['a_bits']} | {spread} | {top1} | {size} |")
    return "\n".join(lines)


def markdown(frame: pd.DataFrame) -> str:
    ok = frame[frame["status"] == "ok"]
    fp32 = ok[ok["quant"] == "none"]
    data = ", ".join(sorted(set(frame["data"].dropna())))
    parts = ["# Post-training quantization of ResNet20", ""]
    if len(fp32):
        row = fp32.iloc[0]
        parts.append(f"FP32: **{row['top1']:.2f} %** top-1, {row['fp32_size_bytes'] / 1024:.0f} KiB. Data: {data}.")
    parts += [
        "",
        "## Test top-1 (%) and change vs FP32",
        "",
        "Columns: weight bits; activations at the same width unless the row says `A<bits>`.",
        "",
        comparison_table(frame),
        "",
        "## Size of the stored model (KiB, serialised)",
        "",
        comparison_table(frame, value="size"),
        "",
    ]
    mixed = frame[frame["average_bits"].notna()]
    if len(mixed):
        parts += [
            "## Mixed precision (weight widths chosen per layer on calibration images)",
            "",
            mixed_table(mixed),
            "",
        ]
    parts += [
        "## Cells that did not run",
        "",
    ]
    skipped = frame[frame["status"] != "ok"]
    if skipped.empty:
        parts.append("None.")
    for _, row in skipped.iterrows():
        parts.append(f"- {variant(row)} W{row['w_bits']}: **{row['status']}**: {row['reason']}")
    return "\n".join(parts) + "\n"


def collect_sensitivity(directories: list[Path]) -> pd.DataFrame:
    """Rows of every ``sensitivity.json`` below ``directories`` (a cell measured twice: the newest wins)."""
    rows = []
    for directory in directories:
        for path in sorted(directory.rglob("sensitivity.json")):
            record = json.loads(path.read_text())
            setting = {key: record.get(key) or "" for key in SENSITIVITY_SETTING}
            rows += [{**row, **setting, "finished_at": record.get("finished_at", "")} for row in record["rows"]]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).sort_values("finished_at", kind="stable")
    frame = frame.drop_duplicates(subset=["layer", "bits", "quantized", *SENSITIVITY_SETTING], keep="last")
    order = {layer: index for index, layer in enumerate(dict.fromkeys(row["layer"] for row in rows))}
    return frame.sort_values(["layer", "bits", "quantized"], key=lambda c: c.map(order) if c.name == "layer" else c)


def sensitivity_columns(frame: pd.DataFrame) -> list[tuple[pd.Series, str]]:
    """``(selector of frame rows, header)`` per column: widest first, weights alone before weights and input.

    Runs that differ in observer, granularity, recovery, checkpoint or data get columns of their
    own; the header names what differs.
    """
    keys = ["bits", "a_bits", "quantized", *SENSITIVITY_SETTING]
    columns = frame[keys].drop_duplicates().sort_values(["bits", "a_bits"], ascending=False)
    varying = [key for key in SENSITIVITY_SETTING if frame[key].nunique() > 1]
    result = []
    for column in columns.itertuples(index=False):
        selector = pd.Series(True, index=frame.index)
        for key in keys:
            selector &= frame[key] == getattr(column, key)
        header = f"W{column.bits}" + ("" if column.a_bits >= 16 else f"A{column.a_bits}")
        header += "".join(f" {getattr(column, key)}" for key in varying)
        result.append((selector, header))
    return result


def sensitivity_table(frame: pd.DataFrame) -> str:
    """Markdown: one row per layer, one column per setting; cells ``top-1 change / logit SQNR``."""
    columns = sensitivity_columns(frame)
    lines = ["| layer | " + " | ".join(header for _, header in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for layer in dict.fromkeys(frame["layer"]):
        cells = []
        for selector, _ in columns:
            match = frame[selector & (frame["layer"] == layer)]
            row = match.iloc[0] if len(match) else None
            cells.append("" if row is None else f"{-row['drop']:+.2f} / {row['sqnr_db']:.1f} dB")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sensitivity(frame: pd.DataFrame, out: Path) -> Path:
    """Top-1 drop and logit SQNR per layer, one bar per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sensitivity_columns(frame)
    layers = list(dict.fromkeys(frame["layer"]))
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    width = 0.8 / len(columns)
    for index, (selector, header) in enumerate(columns):
        part = frame[selector].set_index("layer").reindex(layers)
        x = [i + (index - (len(columns) - 1) / 2) * width for i in range(len(layers))]
        axes[0].bar(x, part["drop"], width, label=header)
        axes[1].bar(x, part["sqnr_db"], width, label=header)
    axes[0].set(ylabel="top-1 drop (points)", yscale="symlog", title="One layer quantized, the rest float")
    axes[1].set(ylabel="logit SQNR (dB)")
    axes[1].set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    axes[0].legend(fontsize=8, ncol=len(columns))
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = out / "layer_sensitivity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Accuracy vs bits, accuracy vs bytes, and weight-only vs weight+activation quantization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = frame[frame["status"] == "ok"].copy()
    ok["variant"] = ok.apply(variant, axis=1)
    fp32 = ok[ok["quant"] == "none"]
    quantized = ok[ok["quant"] != "none"]
    paths = []

    def save(fig: plt.Figure, name: str) -> None:
        paths.append(out / name)
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in quantized[quantized["average_bits"].isna()].groupby("variant"):
        group = group.sort_values("w_bits")
        ax.plot(group["w_bits"], group["top1"], marker="o", label=label)
    if len(fp32):
        ax.axhline(float(fp32["top1"].iloc[0]), color="black", linestyle="--", label="FP32")
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set(xticks=BITS, xticklabels=[str(b) for b in BITS], xlabel="weight bits", ylabel="test top-1 (%)")
    ax.set_title("Accuracy vs bit width")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, "accuracy_vs_bits.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in ok.groupby("variant"):
        ax.scatter(group["size_bytes"] / 1024, group["top1"], label=label, s=25)
    ax.set(xscale="log", xlabel="stored size (KiB, log)", ylabel="test top-1 (%)", title="Accuracy vs model size")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, "accuracy_vs_size.png")

    ours = quantized[(quantized["quant"] == "custom_ptq") & quantized["w_bits"].isin([4, 2])]
    ours = ours[ours["first_last_bits"].isna() & ours["recovery"].isna() & (ours["granularity"] == "per_channel")]
    if len(ours):
        fig, ax = plt.subplots(figsize=(7, 4))
        labels, width_only, both = [], [], []
        for (bits, observer), group in ours.groupby(["w_bits", "observer"], sort=False):
            a8 = group[group["a_bits"] == 8]
            same = group[group["a_bits"] == bits]
            labels.append(f"W{bits} {observer}")
            width_only.append(float(a8["top1"].iloc[0]) if len(a8) else float("nan"))
            both.append(float(same["top1"].iloc[0]) if len(same) else float("nan"))
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], width_only, 0.4, label="activations at 8 bits")
        ax.bar([i + 0.2 for i in x], both, 0.4, label="activations at the weight width")
        ax.set_xticks(list(x), labels, rotation=20)
        ax.set(ylabel="test top-1 (%)", title="Weights alone vs weights and activations")
        ax.legend(fontsize=8)
        save(fig, "weights_vs_activations.png")
    return paths


def report(directories: list[Path], out: Path) -> pd.DataFrame:
    frame = collect(directories)
    sensitivity = collect_sensitivity(directories)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    text = markdown(frame)
    if len(sensitivity):
        sensitivity.to_csv(out / "layer_sensitivity.csv", index=False)
        setting = ", ".join(sorted(set(sensitivity["observer"] + ", " + sensitivity["granularity"])))
        text += (
            "\n## Per-layer sensitivity\n\nOne layer quantized (weights: "
            f"{setting}; its input at 16 bits or at the weight width), every other layer float. "
            "Cells: test top-1 change vs FP32 (points) / SQNR of the logits.\n\n"
            + sensitivity_table(sensitivity)
            + "\n"
        )
        plot_sensitivity(sensitivity, out)
    (out / "results.md").write_text(text)
    plot(frame, out)
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="Hydra multirun directories")
    parser.add_argument("--out", type=Path, required=True, help="report directory, e.g. multirun_reports/NAME")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.sweeps if not d.is_dir()]
    if missing:
        print(f"error: sweep directories {missing} do not exist; expected Hydra multirun directories.", file=sys.stderr)
        return 2
    try:
        frame = report(args.sweeps, args.out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = frame["status"].value_counts().to_dict()
    print(f"{len(frame)} cells {counts} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
