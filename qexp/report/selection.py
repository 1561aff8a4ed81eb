"""Which cells a table or figure shows: the FP32 reference, round-to-nearest, recovery, QAT, PyTorch, the best of each.

Tables (``tables.py``), figures (``plots.py``) and the noise tests (``noise.py``) choose their cells here, so
one name means the same cells everywhere: the table at a glance and ``glance.png`` show the same points, the
recovery table and the recovery panel the same rows. Every selection returns rows of the frame it is given,
with their index, so a chosen cell can be looked up again (``noise.versus_fp32`` is keyed by it).
"""

from __future__ import annotations

import pandas as pd

from qexp.report.cells import SENSITIVITY_SETTING, has, is_float16, recipe, recipes, settings_key

BITS = [16, 8, 4, 2]  # the widths the tables have a column for and the figures an axis tick, widest first


def ok_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells that ran (``status`` ok): failed and unsupported cells have no numbers to show."""
    return frame[frame["status"] == "ok"]


def default_draw(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells calibrated on the default draw of training images (``calib_seed`` null): what every table
    shows. Cells of other draws (``data.calib_seed``) only give the spread beside them (``noise.spreads``)."""
    return frame[frame["calib_seed"].map(lambda seed: seed is None or pd.isna(seed))]


def fp32_cell(frame: pd.DataFrame) -> pd.Series | None:
    """The FP32 reference cell (``quant=none``), or None when the report has none."""
    fp32 = ok_cells(frame)[ok_cells(frame)["quant"] == "none"]
    return fp32.iloc[0] if len(fp32) else None


def float16_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """PyTorch's float16 cells (``is_float16``)."""
    return frame[pd.Series([is_float16(row) for _, row in frame.iterrows()], index=frame.index, dtype=bool)]


def round_to_nearest(frame: pd.DataFrame) -> pd.DataFrame:
    """Our PTQ with nothing added: per-channel narrow weight grids, shared activation grids, no recovery, no
    mixed or first/last widths."""
    return frame[
        (frame["quant"] == "custom_ptq")
        & recipes(frame).isna()
        & frame["first_last_bits"].isna()
        & frame["average_bits"].isna()
        & (frame["granularity"] == "per_channel")
    ]


def same_widths(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with weights and activations at the same width, whatever it is."""
    return cells[cells["w_bits"] == cells["a_bits"]]


def wider_activations(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with 8-bit activations behind narrower weights (W4A8, W2A8): what the activations cost."""
    return cells[(cells["a_bits"] == 8) & (cells["w_bits"] < 8)]


def first_last_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Our PTQ with the first conv and the classifier at their own width (``first_last_bits``), any recipe."""
    return frame[(frame["quant"] == "custom_ptq") & frame["first_last_bits"].notna()]


def mixed_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Mixed-precision cells: per-layer weight widths within an ``average_bits`` budget."""
    return frame[frame["average_bits"].notna()]


def with_recovery(frame: pd.DataFrame) -> pd.DataFrame:
    """Our PTQ with a recovery recipe (``recipe``), at uniform widths."""
    return frame[
        (frame["quant"] == "custom_ptq")
        & recipes(frame).notna()
        & frame["first_last_bits"].isna()
        & frame["average_bits"].isna()
    ]


def recovered_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """``with_recovery`` cells that ran a recovery recipe, not only another grid: what "best recovery" means
    at a glance (shared grids move round-to-nearest by under 0.1 point and would crowd it)."""
    recovered = with_recovery(frame)
    return recovered[recovered["recovery"].notna()]


def qat_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """QAT at uniform widths (no first/last or mixed widths), whatever PTQ recipe it started from."""
    return frame[(frame["quant"] == "qat") & frame["first_last_bits"].isna() & frame["average_bits"].isna()]


def pytorch_int8(frame: pd.DataFrame, flow: str) -> pd.DataFrame:
    """PyTorch's W8A8 cells of one flow (``fx``: results written before ``flow`` existed count as FX)."""
    torch_cells = frame[(frame["quant"] == "torch_ptq") & (frame["w_bits"] == 8) & (frame["a_bits"] == 8)]
    is_pt2e = torch_cells["flow"] == "pt2e"
    return torch_cells[is_pt2e if flow == "pt2e" else ~is_pt2e]


def exported_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells that ran with ``export=onnx`` (their model on ONNX Runtime, or the reason it could not be)."""
    if not has(frame, "onnx_status"):
        return frame.iloc[:0]
    ok = ok_cells(frame)
    return ok[ok["onnx_status"].notna()]


def uniform(cells: pd.DataFrame, bits: int) -> pd.DataFrame:
    """The cells with weights and activations at ``bits``."""
    return cells[(cells["w_bits"] == bits) & (cells["a_bits"] == bits)]


def at_setting(cells: pd.DataFrame, setting: tuple[int, int]) -> pd.Series | None:
    """The first of ``cells`` with ``(w_bits, a_bits) == setting``, or None."""
    match = cells[(cells["w_bits"] == setting[0]) & (cells["a_bits"] == setting[1])]
    return match.iloc[0] if len(match) else None


def best(cells: pd.DataFrame) -> pd.Series | None:
    """The ok cell with the highest top-1 (the first in report order on a tie), or None."""
    cells = ok_cells(cells)
    return cells.sort_values("top1", ascending=False, kind="stable").iloc[0] if len(cells) else None


def recovery_rows(frame: pd.DataFrame) -> tuple[list[tuple[int, int]], list[tuple[str, pd.DataFrame]]]:
    """What the recovery table and panel show: the ``(w_bits, a_bits)`` settings a recipe or QAT ran at
    (widest first), and ``(label, ok cells)`` per observer: round-to-nearest (where it ran at one of
    them), then each recipe and QAT (``+ QAT``, or ``+ recipe + QAT`` when QAT started from a recipe), and
    round-to-nearest and each recipe with the first conv and the classifier wider (``+ first/last 8 bit``,
    ``+ first/last 8 bit + recipe``: the rows BRECQ and QDrop report, beside every layer at the setting's
    widths), in order of its top-1 at the first setting it has. Labels name the observer only when there is
    more than one.
    """
    ok = ok_cells(frame)
    recovered = with_recovery(ok)
    qat = qat_cells(ok)
    ends = first_last_cells(ok)
    ends = ends[ends["average_bits"].isna()]
    settings = sorted(
        {*zip(recovered["w_bits"], recovered["a_bits"], strict=True), *zip(qat["w_bits"], qat["a_bits"], strict=True)},
        reverse=True,
    )
    observers = list(dict.fromkeys([*recovered["observer"], *qat["observer"]]))
    baseline = round_to_nearest(ok)

    def first_top1(cells: pd.DataFrame) -> float:
        return next((cell["top1"] for s in settings if (cell := at_setting(cells, s)) is not None), float("inf"))

    rows = []
    for observer in observers:
        prefix = f"{observer} · " if len(observers) > 1 else ""
        ours = recovered[recovered["observer"] == observer]
        named = recipes(ours)
        rows_of_recipes = [(f"{prefix}+ {name}", ours[named == name]) for name in dict.fromkeys(named)]
        tuned = qat[qat["observer"] == observer]
        starts = recipes(tuned)
        for start in dict.fromkeys(starts):  # None: QAT from round-to-nearest
            label = f"{prefix}+ {start} + QAT" if start is not None else f"{prefix}+ QAT"
            rows_of_recipes.append((label, tuned[starts.map(lambda recipe, start=start: recipe == start)]))
        wide = ends[ends["observer"] == observer]
        for width, start in dict.fromkeys(zip(wide["first_last_bits"], recipes(wide), strict=True)):
            label = " + ".join(part for part in (f"first/last {int(width)} bit", start) if part is not None)
            same = (wide["first_last_bits"] == width) & recipes(wide).map(lambda recipe, start=start: recipe == start)
            rows_of_recipes.append((f"{prefix}+ {label}", wide[same]))
        rows.append((f"{prefix}round-to-nearest", baseline[baseline["observer"] == observer]))
        rows += sorted(rows_of_recipes, key=lambda item: first_top1(item[1]))
    return settings, [(label, cells) for label, cells in rows if first_top1(cells) != float("inf")]


def counterparts(foreign: pd.DataFrame, frame: pd.DataFrame) -> list[tuple[pd.Series, pd.Series | None]]:
    """Each quantized cell of ``foreign`` (another checkpoint's report) at uniform widths (no first/last or mixed
    widths) beside the cell of ``frame`` with its settings but the checkpoint (None where this study has none),
    both of the default calibration draw; of several such cells of ``frame``, the newest.

    In order of the weight and activation widths, widest first, round-to-nearest before any recipe at each.
    """
    theirs, ours = (default_draw(ok_cells(cells)) for cells in (foreign, frame))
    theirs = theirs[(theirs["quant"] != "none") & theirs["first_last_bits"].isna() & theirs["average_bits"].isna()]
    order = sorted(
        theirs.index,
        key=lambda i: (-theirs.at[i, "w_bits"], -theirs.at[i, "a_bits"], recipe(theirs.loc[i]) is not None),
    )
    ours = ours.sort_values("finished_at", kind="stable")  # the last of a setting, the newest, wins below
    ours_by_setting = dict(zip(settings_key(ours.assign(checkpoint="")), ours.index, strict=True))
    keys = settings_key(theirs.assign(checkpoint=""))
    return [(theirs.loc[i], ours.loc[ours_by_setting[keys[i]]] if keys[i] in ours_by_setting else None) for i in order]


def glance_cells(frame: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """The cells of the results at a glance, labelled: FP32, PyTorch's fp16 and int8, ours per width.

    Ours at each width with weights and activations alike: round-to-nearest with its best
    observer, the best recovery recipe where one was run, and the best QAT cell where one was
    run. PyTorch int8 per flow with its best observer.
    """
    ok = ok_cells(frame)
    cells = []
    fp32 = fp32_cell(frame)
    if fp32 is not None:
        cells.append(("FP32", fp32))
    cells += [("PyTorch float16 (not int16)", row) for _, row in float16_cells(ok).iterrows()]
    for flow, name in (("fx", "FX"), ("pt2e", "pt2e")):
        cell = best(pytorch_int8(ok, flow))
        if cell is not None:
            cells.append((f"PyTorch int8, {name} · {cell['observer']}", cell))
    for bits in BITS:
        cell = best(uniform(round_to_nearest(ok), bits))
        if cell is not None:
            cells.append((f"ours, round-to-nearest · {cell['observer']}", cell))
        cell = best(uniform(recovered_cells(ok), bits))
        if cell is not None:
            cells.append((f"ours, {recipe(cell)} · {cell['observer']}", cell))
        cell = best(uniform(qat_cells(ok), bits))
        if cell is not None:
            start = f" from {recipe(cell)}" if recipe(cell) is not None else ""
            cells.append((f"QAT{start} · {cell['observer']}", cell))
    return cells


def headline_cells(frame: pd.DataFrame) -> dict[str, pd.Series | None]:
    """The few cells a study of one checkpoint is summed up by, labelled; None where it has no such cell.

    FP32, round-to-nearest at W8A8 and W4A4 (best observer), the best recovery recipe at W4A4, the best of
    our PTQ at W2A4 (any recipe), and QAT at W4A4 and W2A4: what ``baseline_table`` sets beside another
    checkpoint's, so that what a change of the model cost reads off one table.
    """
    ok = ok_cells(frame)
    ours = ok[(ok["quant"] == "custom_ptq") & ok["first_last_bits"].isna() & ok["average_bits"].isna()]
    w2a4 = ours[(ours["w_bits"] == 2) & (ours["a_bits"] == 4)]
    qat = qat_cells(ok)
    return {
        "FP32": fp32_cell(frame),
        "W8A8, round-to-nearest": best(uniform(round_to_nearest(ok), 8)),
        "W4A4, round-to-nearest": best(uniform(round_to_nearest(ok), 4)),
        "W4A4, best recovery recipe": best(uniform(recovered_cells(ok), 4)),
        "W2A4, best of our PTQ": best(w2a4),
        "W4A4, QAT": best(uniform(qat, 4)),
        "W2A4, QAT": best(qat[(qat["w_bits"] == 2) & (qat["a_bits"] == 4)]),
    }


def size_rows(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of the size table, labelled: our and QAT's integer exports at uniform widths, PyTorch's int8
    per flow and its float16 cast, any status (a cell that did not run says why in its column)."""
    rtn = round_to_nearest(frame)
    torch_ptq = frame[frame["quant"] == "torch_ptq"]
    float16 = float16_cells(torch_ptq)
    qat = qat_cells(frame)
    return {
        "ours (integer export)": rtn[rtn["w_bits"] == rtn["a_bits"]],
        "PyTorch FX int8": torch_ptq[torch_ptq["flow"] != "pt2e"].drop(index=float16.index),
        "PyTorch pt2e int8": torch_ptq[torch_ptq["flow"] == "pt2e"],
        "PyTorch float16 (rounded, not int16)": float16,
        "QAT (integer export)": qat[qat["w_bits"] == qat["a_bits"]],
    }


def uniform_below(ok: pd.DataFrame, mixed: pd.Series) -> pd.Series | None:
    """The uniform cell a mixed-precision cell is set beside: the widest weights within ``mixed``'s budget, with
    its method, observer, activations, granularity and recipe; None when ``ok`` has no such cell."""
    widths = [bits for bits in BITS if bits <= mixed["average_bits"]]
    if not widths:
        return None
    cells = ok[(ok["quant"] == mixed["quant"]) & ok["average_bits"].isna() & ok["first_last_bits"].isna()]
    cells = cells[
        (cells["observer"] == mixed["observer"])
        & (cells["a_bits"] == mixed["a_bits"])
        & (cells["w_bits"] == widths[0])
        & (cells["granularity"] == mixed["granularity"])
        & recipes(cells).map(lambda name: name == recipe(mixed))
    ]
    return cells.iloc[0] if len(cells) else None


def sensitivity_columns(frame: pd.DataFrame) -> list[tuple[pd.Series, str]]:
    """``(selector of frame rows, header)`` per column: widest first, weights alone before weights and input.

    ``frame``: per-layer sensitivity rows (``cells.collect_sensitivity``). Runs that differ in observer,
    granularity, recovery, checkpoint, data or weight grid get columns of their own; the header names
    what differs.
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
        header += "".join(f" {value}" for key in varying if (value := getattr(column, key)))  # "" says nothing
        result.append((selector, header))
    return result
