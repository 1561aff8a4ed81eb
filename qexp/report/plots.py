"""The report's figures, drawn from the same cells and selections as its tables.

Read at a glance: one colour per method (the same in every figure), one line style and marker
per observer, at most about eight series per panel, legends outside the data, recovery recipes
in a panel of their own. ``glance.png`` is the README's one figure: the cells of the table at a
glance, top-1 against bit width.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qexp.report.cells import SENSITIVITY_SETTING, recipes
from qexp.report.selection import (
    BITS,
    at_setting,
    best,
    default_draw,
    first_last_cells,
    float16_cells,
    fp32_cell,
    mixed_cells,
    ok_cells,
    pytorch_int8,
    qat_cells,
    recovered_cells,
    recovery_rows,
    round_to_nearest,
    same_widths,
    sensitivity_columns,
    uniform,
    wider_activations,
    with_recovery,
)

COLOURS = {
    "FP32": "black",
    "ours": "tab:blue",
    "ours · A8": "tab:cyan",
    "ours · first/last 8 bit": "tab:green",
    "ours + recovery": "tab:pink",
    "ours · mixed precision": "tab:olive",
    "PyTorch FX": "tab:orange",
    "PyTorch pt2e": "tab:red",
    "PyTorch float16": "tab:purple",
    "QAT": "darkgreen",
}
RECIPE_COLOURS = ["tab:brown", "tab:gray", "gold", "teal", "navy", "lime"]
OBSERVER_STYLES = {"minmax": ("-", "o"), "percentile": (":", "^"), "mse": ("--", "s")}
OTHER_STYLE = ("-", "D")  # "none": a cast or the float model
POSITION = {bits: index for index, bits in enumerate(BITS)}  # 16 bits on the left: accuracy falls to the right
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "frameon": False}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here or in CI), imported when first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(observer: str) -> tuple[str, str]:
    return OBSERVER_STYLES.get(observer, OTHER_STYLE)


def _bits_axis(ax, xlabel: str) -> None:
    ax.set_xticks(range(len(BITS)), [str(bits) for bits in BITS])
    ax.set(xlim=(-0.4, len(BITS) - 0.6), ylim=(0, 100), xlabel=xlabel, ylabel="test top-1 (%)")
    ax.grid(alpha=0.3)


def _reference_lines(ax, frame: pd.DataFrame) -> None:
    fp32 = fp32_cell(frame)
    if fp32 is not None:
        ax.axhline(fp32["top1"], color=COLOURS["FP32"], linestyle="--", linewidth=1, label=f"FP32 ({fp32['top1']:.2f})")
    ax.axhline(10, color="grey", linestyle=":", linewidth=1, label="chance (10)")


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` and free it (a report draws many): the one way every figure is saved."""
    fig.savefig(path, dpi=120, bbox_inches="tight")  # legends sit outside the axes: keep them whole
    pyplot().close(fig)
    return path


def plot(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure of the report that ``frame`` has cells for, written into ``out``: the default calibration
    draw's cells, as every table shows them."""
    frame = default_draw(frame)
    paths = [plot_glance(frame, out), plot_accuracy_vs_bits(frame, out), plot_accuracy_vs_size(frame, out)]
    paths.append(plot_weights_vs_activations(frame, out))
    return [path for path in paths if path is not None]


def plot_glance(frame: pd.DataFrame, out: Path) -> Path:
    """Top-1 against bit width: ours round-to-nearest, best recovery and QAT (best observers), PyTorch, FP32."""
    plt = pyplot()
    ok = ok_cells(frame)
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    _reference_lines(ax, frame)
    for label, colour, cells, marker, offset in (
        ("ours, round-to-nearest (best observer)", COLOURS["ours"], round_to_nearest(ok), "o", (6, -12)),
        ("ours, best recovery recipe", COLOURS["ours + recovery"], recovered_cells(ok), "s", (-36, -3)),
        ("QAT (best observer)", COLOURS["QAT"], qat_cells(ok), "D", (6, 4)),
    ):
        points = [(POSITION[b], cell["top1"]) for b in BITS if (cell := best(uniform(cells, b))) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, color=colour, label=label)
            for x, y in points:
                ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=offset, fontsize=8, color=colour)
    float16 = float16_cells(ok)
    if len(float16):
        ax.plot([POSITION[16] + 0.08], [float16["top1"].iloc[0]], "D", color=COLOURS["PyTorch float16"],
                label="PyTorch float16 (a cast)")  # fmt: skip
    for flow, offset in (("fx", -0.08), ("pt2e", 0.08)):
        cell = best(pytorch_int8(ok, flow))
        if cell is not None:
            name = "PyTorch FX" if flow == "fx" else "PyTorch pt2e"
            ax.plot([POSITION[8] + offset], [cell["top1"]], "^", color=COLOURS[name], label=f"{name} int8")
    _bits_axis(ax, "bits (weights and activations alike)")
    ax.set_title("ResNet20, CIFAR-10: test top-1 as the bit width falls")
    ax.legend(**OUTSIDE)
    return save_figure(fig, out / "glance.png")


def plot_accuracy_vs_bits(frame: pd.DataFrame, out: Path) -> Path:
    """Three panels: round-to-nearest ours vs PyTorch; ours with 8-bit activations or ends; recovery recipes."""
    plt = pyplot()
    ok = ok_cells(frame)
    rtn = round_to_nearest(ok)
    fig, axes = plt.subplots(3, 1, figsize=(9, 12), layout="constrained")

    ax = axes[0]
    _reference_lines(ax, frame)
    same = same_widths(rtn)
    for observer, cells in same.groupby("observer", sort=False):
        _line(ax, cells, COLOURS["ours"], observer, f"ours · {observer}")
    for flow, name, offset in (("fx", "PyTorch FX", -0.06), ("pt2e", "PyTorch pt2e", 0.06)):
        for observer, cells in pytorch_int8(ok, flow).groupby("observer", sort=False):
            marker = _style(observer)[1]
            ax.plot([POSITION[8] + offset], [cells["top1"].iloc[0]], marker, color=COLOURS[name],
                    label=f"{name} int8 · {observer}")  # fmt: skip
    for _, cell in float16_cells(ok).iterrows():
        ax.plot([POSITION[16]], [cell["top1"]], "D", color=COLOURS["PyTorch float16"], label="PyTorch float16")
    _bits_axis(ax, "bits (weights and activations alike)")
    ax.set_title("Round-to-nearest: ours and PyTorch, weights and activations at the same width")
    ax.legend(**OUTSIDE)

    ax = axes[1]
    _reference_lines(ax, frame)
    for observer, cells in same.groupby("observer", sort=False):
        _line(ax, cells, COLOURS["ours"], observer, f"ours · {observer} (as above)", alpha=0.35)
    for observer, cells in wider_activations(rtn).groupby("observer", sort=False):
        _line(ax, cells, COLOURS["ours · A8"], observer, f"ours · {observer} · activations 8 bit")
    ends = same_widths(first_last_cells(ok))
    for observer, cells in ends[recipes(ends).isna()].groupby("observer", sort=False):
        _line(ax, cells, COLOURS["ours · first/last 8 bit"], observer, f"ours · {observer} · first/last 8 bit")
    _bits_axis(ax, "weight bits")
    ax.set_title("Ours: what 8-bit activations, or 8-bit first and last layers, give back")
    ax.legend(**OUTSIDE)

    _recovery_panel(axes[2], frame)
    return save_figure(fig, out / "accuracy_vs_bits.png")


def _line(ax, cells: pd.DataFrame, colour: str, observer: str, label: str, alpha: float = 1.0) -> None:
    cells = cells.sort_values("w_bits", ascending=False)
    linestyle, marker = _style(observer)
    x = [POSITION[bits] for bits in cells["w_bits"]]
    ax.plot(x, cells["top1"], linestyle=linestyle, marker=marker, color=colour, label=label, alpha=alpha)


def _recovery_panel(ax, frame: pd.DataFrame) -> None:
    """Grouped bars: one group per ``WbAb`` a recipe was run at, one bar per recipe present there."""
    from matplotlib.patches import Patch

    settings, recipes = recovery_rows(frame)
    ok = ok_cells(frame)
    qat = qat_cells(ok)
    observers = sorted({*with_recovery(ok)["observer"], *qat["observer"]})
    title = "Recovery recipes of our PTQ" + (" and QAT" if len(qat) else "")
    ax.set_title(title + (f" (observer {observers[0]})" if len(observers) == 1 else ""))
    if not settings:
        ax.text(0.5, 0.5, "no recovery cells in this report", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    _reference_lines(ax, frame)
    # Round-to-nearest in ours' colour; the rows of the best recovered cell and of the best QAT cell in the
    # colours glance.png gives them; every other row a colour of its own.
    tops = {COLOURS["ours + recovery"]: best(recovered_cells(ok)), COLOURS["QAT"]: best(qat)}
    others = iter(RECIPE_COLOURS * len(recipes))
    colours = {}
    for label, cells in recipes:
        if label.endswith("round-to-nearest"):
            colours[label] = COLOURS["ours"]
        else:
            colours[label] = next((colour for colour, top in tops.items() if _row_of(cells, top)), None) or next(others)
    width = 0.8 / max(sum(at_setting(cells, s) is not None for _, cells in recipes) for s in settings)
    for position, setting in enumerate(settings):
        present = [(label, cell) for label, cells in recipes if (cell := at_setting(cells, setting)) is not None]
        for index, (label, cell) in enumerate(present):
            x = position + (index - (len(present) - 1) / 2) * width
            ax.bar_label(ax.bar([x], [cell["top1"]], width, color=colours[label]), fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(settings)), [f"W{w}A{a}" for w, a in settings])
    ax.set(xlim=(-0.5, len(settings) - 0.5), ylim=(0, 100), ylabel="test top-1 (%)")
    ax.set_xlabel("weight and activation bits")
    ax.grid(alpha=0.3, axis="y")
    lines, _ = ax.get_legend_handles_labels()
    ax.legend(handles=lines + [Patch(color=colours[label], label=label) for label, _ in recipes], **OUTSIDE)


def _row_of(cells: pd.DataFrame, top: pd.Series | None) -> bool:
    """Whether ``top`` is one of ``cells`` (one row of the recovery panel): selections keep the frame's index, so
    only the row that holds the cell gets its colour, not every row that shares its recovery recipe."""
    return top is not None and top.name in cells.index


def plot_accuracy_vs_size(frame: pd.DataFrame, out: Path) -> Path:
    """Top-1 against stored bytes: colour by method, marker by observer."""
    plt = pyplot()
    ok = ok_cells(frame)
    rtn = round_to_nearest(ok)
    groups = {
        "FP32": ok[ok["quant"] == "none"],
        "ours": same_widths(rtn),
        "ours · A8": wider_activations(rtn),
        "ours · first/last 8 bit": first_last_cells(ok),
        "ours + recovery": with_recovery(ok),
        "ours · mixed precision": mixed_cells(ok[ok["quant"] == "custom_ptq"]),
        "PyTorch FX": pytorch_int8(ok, "fx"),
        "PyTorch pt2e": pytorch_int8(ok, "pt2e"),
        "PyTorch float16": float16_cells(ok),
        "QAT": ok[ok["quant"] == "qat"],
    }
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for method, cells in groups.items():
        for observer, part in cells.groupby("observer", sort=False):
            ax.scatter(part["size_bytes"] / 1024, part["top1"], s=30, color=COLOURS[method], marker=_style(observer)[1])
    present = [method for method, cells in groups.items() if len(cells)]
    methods = [ax.scatter([], [], color=COLOURS[method], marker="o", label=method) for method in present]
    markers = [ax.scatter([], [], color="grey", marker=_style(o)[1], label=o) for o in dict.fromkeys(ok["observer"])]
    ax.legend(handles=methods + markers, title="colour: method; marker: observer", **OUTSIDE)
    ax.set(xscale="log", xlabel="stored size (KiB, serialised file, log scale)", ylabel="test top-1 (%)", ylim=(0, 100))
    ax.set_title("Accuracy vs stored size")
    ax.grid(alpha=0.3)
    return save_figure(fig, out / "accuracy_vs_size.png")


def plot_weights_vs_activations(frame: pd.DataFrame, out: Path) -> Path | None:
    """Ours at 4 and 2 bits, round-to-nearest: activations at 8 bits against activations at the weight width."""
    plt = pyplot()
    ours = round_to_nearest(ok_cells(frame))
    ours = ours[ours["w_bits"].isin([4, 2])]
    if ours.empty:
        return None
    labels, width_only, both = [], [], []
    for (bits, observer), group in ours.groupby(["w_bits", "observer"], sort=False):
        a8 = group[group["a_bits"] == 8]
        same = group[group["a_bits"] == bits]
        labels.append(f"W{bits}\n{observer}")
        width_only.append(float(a8["top1"].iloc[0]) if len(a8) else float("nan"))
        both.append(float(same["top1"].iloc[0]) if len(same) else float("nan"))
    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    _reference_lines(ax, frame)
    x = range(len(labels))
    for offset, values, colour, label in (
        (-0.2, width_only, COLOURS["ours · A8"], "activations at 8 bits"),
        (0.2, both, COLOURS["ours"], "activations at the weight width"),
    ):
        bars = ax.bar([i + offset for i in x], values, 0.4, color=colour, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(list(x), labels)
    ax.set(ylabel="test top-1 (%)", ylim=(0, 100))
    ax.set_title("Ours, round-to-nearest: weights alone vs weights and activations")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(**OUTSIDE)
    return save_figure(fig, out / "weights_vs_activations.png")


def plot_sensitivity(frame: pd.DataFrame, out: Path) -> Path:
    """Top-1 drop and logit SQNR per layer, one bar per setting."""
    plt = pyplot()
    columns = sensitivity_columns(frame)
    layers = list(dict.fromkeys(frame["layer"]))
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, layout="constrained")
    width = 0.8 / len(columns)
    for index, (selector, header) in enumerate(columns):
        part = frame[selector].set_index("layer").reindex(layers)
        x = [i + (index - (len(columns) - 1) / 2) * width for i in range(len(layers))]
        axes[0].bar(x, part["drop"], width, label=header)
        axes[1].bar(x, part["sqnr_db"], width, label=header)
    setting = ", ".join(str(frame[key].iloc[0]) for key in SENSITIVITY_SETTING[:2])
    axes[0].set(ylabel="top-1 drop (points)", yscale="symlog", title=f"One layer quantized ({setting}), the rest float")
    axes[1].set(ylabel="logit SQNR (dB)")
    axes[1].set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    axes[0].legend(**OUTSIDE)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out / "layer_sensitivity.png")
