"""Markdown tables of a report's cells, and ``results.md`` assembled from them.

Every table is a function of the cells alone, so ``results.md`` and the README's generated
blocks (``readme.py``) show the same numbers; which cells each shows is ``selection.py``'s, and
here they are only laid out and written. Columns for fields that later runs record
(``payload_bytes``, ``val_top1``, ``extra_test_top1``, ``test_correct``) appear only when some cell has them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from qexp.report.cells import cell_name, has, is_float16, recipe, variant
from qexp.report.noise import Spread, judged, noise_table, spreads, versus_fp32, worth
from qexp.report.selection import (
    BITS,
    at_setting,
    counterparts,
    default_draw,
    exported_cells,
    fp32_cell,
    glance_cells,
    headline_cells,
    mixed_cells,
    ok_cells,
    recovery_rows,
    sensitivity_columns,
    size_rows,
    uniform_below,
)


def kib(value: float) -> str:
    return f"{value / 1024:.0f}"


def top1_text(row: pd.Series, fp32: pd.Series | None) -> str:
    """``86.95 (+0.01)``: top-1 and its change against FP32; the status for a cell that did not run."""
    if row["status"] != "ok":
        return row["status"]
    text = f"{row['top1']:.2f}"
    if fp32 is not None:
        text += f" ({row['top1'] - fp32['top1']:+.2f})"
    return text


def size_text(row: pd.Series) -> str:
    """Serialised KiB, and ``/ payload KiB`` when the cell recorded its payload."""
    if row["status"] != "ok":
        return row["status"]
    text = kib(row["size_bytes"])
    if not pd.isna(row.get("payload_bytes")):
        text += f" / {kib(row['payload_bytes'])}"
    return text


def val_text(row: pd.Series) -> str:
    """Validation top-1 and its change against the float model on the same images; empty when not measured."""
    if row["status"] != "ok" or pd.isna(row.get("val_top1")):
        return ""
    return f"{row['val_top1']:.2f} ({row['val_top1'] - row['fp32_val_top1']:+.2f})"


def extra_test_text(row: pd.Series) -> str:
    """``85.35 ± 1.11``: top-1 on the second test set with one standard error; empty when not measured."""
    if row["status"] != "ok" or pd.isna(row.get("extra_test_top1")):
        return "" if row["status"] == "ok" else row["status"]
    return f"{row['extra_test_top1']:.2f} ± {row['extra_test_stderr']:.2f}"


def pivot(frame: pd.DataFrame, text: Callable[[pd.Series], str]) -> str:
    """Markdown: one row per ``variant`` (method, observer, what differs), one column per weight width."""
    quantized = frame[(frame["quant"] != "none") & frame["average_bits"].isna()].copy()
    quantized["variant"] = [variant(row) for _, row in quantized.iterrows()]
    lines = ["| method · observer | " + " | ".join(f"W{b}" for b in BITS) + " |", "|" + "---|" * (len(BITS) + 1)]
    for label, group in quantized.groupby("variant", sort=False):
        at = {bits: group[group["w_bits"] == bits] for bits in BITS}
        cells = [text(at[bits].iloc[0]) if len(at[bits]) else "" for bits in BITS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(frame: pd.DataFrame) -> str:
    """Test top-1 and change against FP32 for every uniform-width cell."""
    fp32 = fp32_cell(frame)
    return pivot(frame, lambda row: top1_text(row, fp32))


def bits_text(row: pd.Series) -> str:
    if row["quant"] == "none":
        return "fp32"
    return "fp16" if is_float16(row) else f"W{row['w_bits']}A{row['a_bits']}"


def glance_table(frame: pd.DataFrame) -> str:
    """Markdown: the glance cells with top-1, change against FP32 (and its verdict when tested), size.

    The cells are the default calibration draw's; where a cell was also run on other draws, their mean ±
    standard deviation stand beside it and enter its verdict (``noise.judged``).
    """
    shown = default_draw(frame)
    cells = glance_cells(shown)
    fp32 = fp32_cell(shown)
    verdicts, spread = versus_fp32(shown), spreads(frame)
    extra = has(shown, "extra_test_top1")
    payload = has(shown, "payload_bytes")
    header = ["", "bits", "test top-1 (%)", "vs FP32"]
    drawn = any(row.name in spread for _, row in cells)
    if drawn:
        header.append("over calibration draws (mean ± s.d., draws)")
    if extra:
        label = frame["extra_test_label"].dropna().iloc[0]
        header.append(f"top-1 on {label} (%, ± 1 s.e.)")
    header.append("size (KiB)")
    if payload:
        header.append("payload (KiB)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in cells:
        change = ""
        if fp32 is not None and row["quant"] != "none":
            change = f"{row['top1'] - fp32['top1']:+.2f}"
            if row.name in verdicts:
                change += f", {judged(row['top1'] - fp32['top1'], verdicts[row.name], spread.get(row.name))}"
        values = [label, bits_text(row), f"{row['top1']:.2f}", change]
        if drawn:
            values.append(spread_text(spread.get(row.name)))
        if extra:
            values.append(extra_test_text(row))
        values.append(kib(row["size_bytes"]))
        if payload:
            values.append("" if pd.isna(row.get("payload_bytes")) else kib(row["payload_bytes"]))
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def baseline_table(baseline: pd.DataFrame, frame: pd.DataFrame, names: tuple[str, str]) -> str:
    """Markdown: the ``headline_cells`` of two reports side by side, each with its change against its own FP32.

    ``names`` head the two columns (e.g. the narrow network and the full-width one); a cell one report
    lacks is blank, and the recipe that made each number is named beside it.
    """
    columns = [headline_cells(default_draw(baseline)), headline_cells(default_draw(frame))]
    fp32 = [fp32_cell(default_draw(baseline)), fp32_cell(default_draw(frame))]
    lines = [f"| | {names[0]} | {names[1]} |", "|---|---|---|"]
    for label in columns[0]:
        texts = []
        for cells, reference in zip(columns, fp32, strict=True):
            cell = cells[label]
            if cell is None or cell["quant"] == "none":
                texts.append("" if cell is None else f"{cell['top1']:.2f}")
                continue
            how = recipe(cell) if cell["quant"] == "custom_ptq" else None
            texts.append(f"{top1_text(cell, reference)} · {cell['observer']}" + (f" · {how}" if how else ""))
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def foreign_table(foreign: pd.DataFrame, frame: pd.DataFrame) -> str:
    """Markdown: the cells of another checkpoint's report (``foreign``) beside this study's cells of the same
    settings, one row per model and test set, each against its own FP32 on that set: does a recipe hold on a
    model it was not tuned on? The second test set (``extra_test_top1``) with one standard error; blank where
    a cell did not measure it. Models are named by their checkpoint's file name.
    """
    pairs = counterparts(foreign, frame)
    if not pairs:
        return ""
    header = ["model · test images", "FP32"]
    header += [f"W{cell['w_bits']}A{cell['a_bits']} {recipe(cell) or 'round-to-nearest'}" for cell, _ in pairs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    theirs, ours = (list(side) for side in zip(*pairs, strict=True))
    for cells in (ours, theirs):
        known = [cell for cell in cells if cell is not None]
        if not known:
            continue
        name = f"`{Path(known[0]['checkpoint']).name}`"
        lines.append(f"| {name} · {known[0]['data']} | {known[0]['fp32_top1']:.2f} | " + " | ".join(
            "" if cell is None else top1_text(cell, pd.Series({"top1": cell["fp32_top1"]})) for cell in cells
        ) + " |")  # fmt: skip
        extra = [cell for cell in known if not pd.isna(cell.get("extra_test_top1"))]
        if extra:
            texts = ["" if cell is None else extra_change_text(cell) for cell in cells]
            fp32 = f"{extra[0]['extra_test_fp32_top1']:.2f}"
            lines.append(f"| {name} · {extra[0]['extra_test_label']} | {fp32} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def extra_change_text(row: pd.Series) -> str:
    """``80.14 ± 1.25 (-11.50)``: ``extra_test_text`` and the change against FP32 on the same images."""
    text = extra_test_text(row)
    return f"{text} ({row['extra_test_top1'] - row['extra_test_fp32_top1']:+.2f})" if text else ""


def spread_text(spread: Spread | None) -> str:
    """``84.43 ± 0.12 (3)``: top-1 over calibration draws; empty for a cell run on one draw."""
    return "" if spread is None else f"{spread.mean:.2f} ± {spread.std:.2f} ({spread.draws})"


def spread_table(frame: pd.DataFrame) -> str:
    """Markdown: every cell run on several calibration draws, its default draw's top-1 beside the draws' mean ±
    standard deviation, and the change of the mean against FP32; empty when no cell was."""
    spread = spreads(frame)
    if not spread:
        return ""
    fp32 = fp32_cell(default_draw(frame))
    lines = [
        "| cell | bits | top-1, default draw | mean ± s.d. over draws | draws | mean vs FP32 |",
        "|---|---|---|---|---|---|",
    ]
    for index, found in spread.items():
        cell = frame.loc[index]
        change = f"{found.mean - fp32['top1']:+.2f}" if fp32 is not None else ""
        lines.append(
            f"| {cell_name(cell)} | {bits_text(cell)} | {cell['top1']:.2f} | {found.mean:.2f} ± {found.std:.2f} "
            f"| {found.draws} | {change} |"
        )
    return "\n".join(lines)


def size_table(frame: pd.DataFrame) -> str:
    """Markdown: stored size per method and width, in KiB and as a fraction of FP32 (payload beside, if recorded)."""
    fp32 = fp32_cell(frame)
    if fp32 is None:
        return ""

    def text(cells: pd.DataFrame) -> str:
        ok = ok_cells(cells)
        if ok.empty:
            return cells["status"].iloc[0] if len(cells) else ""
        row = ok.iloc[0]
        value = f"{kib(row['size_bytes'])} ({row['size_bytes'] / fp32['size_bytes']:.2f}×)"
        if not pd.isna(row.get("payload_bytes")) and not pd.isna(fp32.get("payload_bytes")):
            value += f"; payload {kib(row['payload_bytes'])} ({row['payload_bytes'] / fp32['payload_bytes']:.2f}×)"
        return value

    caption = f"Stored size in KiB and as a fraction of FP32's {kib(fp32['size_bytes'])} KiB (serialised file"
    if has(frame, "payload_bytes") and not pd.isna(fp32.get("payload_bytes")):
        caption += f"; payload: the numbers alone, FP32 {kib(fp32['payload_bytes'])} KiB"
    lines = [caption + "):", "", "| | " + " | ".join(f"W{b}" for b in BITS) + " |", "|" + "---|" * (len(BITS) + 1)]
    for label, cells in size_rows(frame).items():
        if len(cells):
            lines.append(f"| {label} | " + " | ".join(text(cells[cells["w_bits"] == b]) for b in BITS) + " |")
    return "\n".join(lines)


def onnx_table(frame: pd.DataFrame) -> str:
    """Markdown: each exported cell on ONNX Runtime beside our simulation, with the kernels it ran and its latency.

    Empty when no cell was exported; a cell that could not be is listed under the table with its reason.
    """
    cells = exported_cells(frame)
    if cells.empty:
        return ""
    lines = [
        "| | bits | ours, simulated (%) | ONNX Runtime (%) | same class (%) | integer kernels | opset | "
        "ms, batch 1 (ORT fp32) | ms, batch 256 (ORT fp32) |",
        "|" + "---|" * 9,
    ]
    exported = cells[cells["onnx_status"] == "ok"]
    order = exported.assign(_fp32=exported["quant"] != "none").sort_values(
        ["_fp32", "w_bits", "a_bits", "top1"], ascending=[True, False, False, False]
    )  # FP32 first, then widest weights
    for _, row in order.iterrows():
        latency = [f"{row[f'onnx_ms_batch{size}']:.2f} ({row[f'onnx_fp32_ms_batch{size}']:.2f})" for size in (1, 256)]
        values = [
            cell_name(row),
            bits_text(row),
            f"{row['top1']:.2f}",
            f"{row['onnx_top1']:.2f}",
            f"{row['onnx_agreement']:.2f}",
            f"{int(row['onnx_integer_kernels'])}",
            f"{int(row['onnx_opset'])}",
            *latency,
        ]
        lines.append("| " + " | ".join(values) + " |")
    for _, row in cells[cells["onnx_status"] != "ok"].iterrows():
        lines.append(f"\n- {cell_name(row)}: **{row['onnx_status']}**: {row['onnx_reason']}")
    return "\n".join(lines)


def recovery_table(frame: pd.DataFrame) -> str:
    """Markdown: round-to-nearest and each recovery recipe, one column per ``WbAb`` a recipe was run at.

    Rows as ``recovery_rows`` orders them; the best cell of each column is bold; seconds are per
    cell, the range over the row's cells.
    """
    settings, recipes = recovery_rows(frame)
    if not settings:
        return ""
    fp32 = fp32_cell(frame)
    rows = [(label, [at_setting(cells, setting) for setting in settings]) for label, cells in recipes]
    best_top1 = [max(cells[i]["top1"] for _, cells in rows if cells[i] is not None) for i in range(len(settings))]
    lines = [
        "| recipe | " + " | ".join(f"W{w}A{a}" for w, a in settings) + " | seconds per cell |",
        "|" + "---|" * (len(settings) + 2),
    ]
    for label, cells in rows:
        texts = []
        for cell, top in zip(cells, best_top1, strict=True):
            text = "" if cell is None else top1_text(cell, fp32)
            texts.append(f"**{text}**" if cell is not None and cell["top1"] == top else text)
        seconds = [cell["seconds"] for cell in cells if cell is not None]
        low, high = f"{min(seconds):.0f}", f"{max(seconds):.0f}"
        lines.append(f"| {label} | " + " | ".join(texts) + f" | {low if low == high else f'{low}–{high}'} |")
    return "\n".join(lines)


def mixed_table(frame: pd.DataFrame) -> str:
    """Markdown: one row per mixed-precision cell (largest budget first) beside uniform weights below its budget."""
    ok = ok_cells(frame)
    mixed = mixed_cells(frame)
    if mixed.empty:
        return ""
    fp32 = fp32_cell(frame)
    lines = [
        "| observer · recovery | budget (bits/weight) | activations | weight widths (layers) | top-1 | size (KiB) "
        "| uniform weights below the budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in mixed.sort_values("average_bits", ascending=False, kind="stable").iterrows():
        layer_bits = row.get("layer_bits") if isinstance(row.get("layer_bits"), dict) else {}
        widths = pd.Series([bits[0] for bits in layer_bits.values()]).value_counts()
        spread = ", ".join(f"{count}× {bits}" for bits, count in sorted(widths.items(), reverse=True))
        label = row["observer"] + (f" · {recipe(row)}" if recipe(row) is not None else "")
        size = size_text(row) if row["status"] == "ok" else ""
        lines.append(
            f"| {label} | {row['average_bits']:g} | A{row['a_bits']} | {spread} | {top1_text(row, fp32)} | {size} "
            f"| {uniform_text(uniform_below(ok, row))} |"
        )
    return "\n".join(lines)


def uniform_text(cell: pd.Series | None) -> str:
    """``W2A8 70.00, 20 KiB``: the uniform cell a mixed-precision cell is set beside; empty when there is none."""
    if cell is None:
        return ""
    return f"W{cell['w_bits']}A{cell['a_bits']} {cell['top1']:.2f}, {kib(cell['size_bytes'])} KiB"


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


def results_markdown(everything: pd.DataFrame, sensitivity: pd.DataFrame) -> str:
    """The whole ``results.md``: at a glance, top-1, second test set, sizes, recovery, mixed, the spread over
    calibration draws, noise, sensitivity. Every table but the spread shows the default draw's cells."""
    frame = default_draw(everything)
    fp32 = fp32_cell(frame)
    data = ", ".join(sorted(set(frame["data"].dropna())))
    parts = ["# Post-training quantization of ResNet20", ""]
    if fp32 is not None:
        parts.append(f"FP32: **{fp32['top1']:.2f} %** top-1, {kib(fp32['fp32_size_bytes'])} KiB. Data: {data}.")
    parts += [
        "",
        worth(frame),
        "",
        "## At a glance",
        "",
        glance_table(everything),
        "",
        "![at a glance](glance.png)",
        "",
    ]
    parts += [
        "## Test top-1 (%) and change vs FP32",
        "",
        "Columns: weight bits; activations at the same width unless the row says `A<bits>`.",
        "",
        comparison_table(frame),
        "",
    ]
    if has(frame, "val_top1"):
        parts += [
            "## Validation top-1 (%) and change vs FP32: what settings are chosen on",
            "",
            "The held-out training images the checkpoint never saw (its recorded split); recipes are compared "
            "here, and the test split above is reported once.",
            "",
            pivot(frame, val_text),
            "",
        ]
    if has(frame, "extra_test_top1"):
        label = frame["extra_test_label"].dropna().iloc[0]
        parts += [f"## Top-1 (%) on {label}, ± one standard error", "", pivot(frame, extra_test_text), ""]
    unit = "KiB: serialised file / payload" if has(frame, "payload_bytes") else "KiB, serialised"
    parts += [f"## Size of the stored model ({unit})", "", pivot(frame, size_text), ""]
    if has(frame, "payload_bytes"):
        parts += [
            "Payload: integer weights at their bit width, scales as float32, zero points at the width of their "
            "grid, biases as float32 (`qexp/quant/export/payload.py`); the file adds the format's overhead.",
            "",
        ]
    for title, table in (
        ("## On ONNX Runtime (exported cells, `export=onnx`; latency with one thread)", onnx_table(frame)),
        ("## Recovery of 4 and 2 bits (test top-1, change vs FP32)", recovery_table(frame)),
        ("## Mixed precision (weight widths chosen per layer on calibration images)", mixed_table(frame)),
        ("## Over calibration draws (`data.calib_seed`: other draws of training images)", spread_table(everything)),
    ):
        if table:
            parts += [title, "", table, ""]
    parts += ["## Differences beyond noise", ""]
    noise = noise_table(frame)
    parts.append(
        noise
        or "The cells do not record per-image correctness (`test_correct`, added after they ran): no difference "
        "is tested here. Re-running the grid records it."
    )
    parts += ["", "## Cells that did not run", ""]
    skipped = frame[frame["status"] != "ok"]
    if skipped.empty:
        parts.append("None.")
    for _, row in skipped.iterrows():
        parts.append(f"- {variant(row)} W{row['w_bits']}: **{row['status']}**: {row['reason']}")
    text = "\n".join(parts) + "\n"
    if len(sensitivity):
        setting = ", ".join(sorted(set(sensitivity["observer"] + ", " + sensitivity["granularity"])))
        text += (
            "\n## Per-layer sensitivity\n\nOne layer quantized (weights: "
            f"{setting}; its input at 16 bits or at the weight width), every other layer float. "
            "Cells: test top-1 change vs FP32 (points) / SQNR of the logits.\n\n"
            + sensitivity_table(sensitivity)
            + "\n\n![layer sensitivity](layer_sensitivity.png)\n"
        )
    return text
