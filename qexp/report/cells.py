"""The cells of a report: collected from sweeps' ``result.json`` files, or read back from ``results.csv``.

Both give the same frame (one row per cell, ``None`` where a setting does not apply), so every
table and plot can be made from either: the committed report and the README's tables are
regenerated from the committed ``results.csv`` without the sweep directories. The selections
here (the FP32 cell, round-to-nearest, the best observer) are shared by tables and plots, so
both show the same cells.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pandas as pd

from qexp.provenance import portable_path

CELL = [
    "quant", "flow", "w_bits", "a_bits", "observer", "granularity", "first_last_bits", "recovery", "average_bits",
    "shared_activations", "weight_grid", "data", "checkpoint",
]  # fmt: skip
BITS = [16, 8, 4, 2]
SENSITIVITY_SETTING = ["observer", "granularity", "recovery", "checkpoint", "data", "weight_grid"]
FULL_RANGE = "full-range weights"  # quant.weight_grid=full: four levels at 2 bits, one more than narrow at any width
METHOD_NAMES = {"none": "FP32", "custom_ptq": "ours", "torch_ptq": "PyTorch", "qat": "QAT"}


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
    return newest_per_cell(pd.DataFrame(rows))


def merge(committed: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """The cells of a ``results.csv`` and of newer sweeps together: a new cell replaces a committed one of the
    same settings (``CELL``), whatever its content hash (older cells have none, and a result schema bump
    changes it).

    Every cell must measure the same checkpoint on the same test split, or one table would mix
    models: their FP32 top-1 is the fingerprint, and cells that disagree on it are a ``ValueError``.
    """
    committed, new = _with_none_settings(committed), _with_none_settings(new)
    frame = pd.concat([committed, new], ignore_index=True)
    fp32 = sorted(set(frame.loc[frame["status"] == "ok", "fp32_top1"].dropna().round(4)))
    if len(fp32) > 1:
        raise ValueError(
            f"the cells to merge measured FP32 top-1 {fp32}: they come from different checkpoints or test splits; "
            "report them apart (a new checkpoint needs its own sweeps, not the committed cells)."
        )
    replaced = settings_key(committed).isin(set(settings_key(new)))
    return newest_per_cell(pd.concat([committed[~replaced], new], ignore_index=True))


def settings_key(frame: pd.DataFrame) -> pd.Series:
    """The ``CELL`` settings of each cell as one string; 8.0 (a CSV column with blanks) reads as 8."""

    def text(value: Any) -> str:
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return frame[CELL].apply(lambda row: "|".join(text(value) for value in row), axis=1)


def newest_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, the newest ``finished_at`` winning, sorted for reading."""
    frame = frame.reindex(columns=sorted({*CELL, "finished_at", "cell_key", *frame.columns}))
    frame = _with_none_settings(frame)
    # A cell is its content hash when it has one (every setting, e.g. a 1-epoch QAT wiring check is
    # not the 15-epoch cell); cells written before the hash existed are told apart by CELL.
    # An exported cell (export=onnx) has its twin's key: the newer of the two is shown, never older numbers.
    identity = frame["cell_key"].where(frame["cell_key"].notna(), settings_key(frame))
    frame = frame.assign(_identity=identity).sort_values("finished_at").drop_duplicates("_identity", keep="last")
    frame = frame.drop(columns="_identity")
    return frame.sort_values(["quant", "observer", "w_bits", "a_bits"], ascending=[True, True, False, False])


def read_results(path: Path) -> pd.DataFrame:
    """The frame that ``collect`` gave when it wrote ``path`` (a ``results.csv``), in the same order."""
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file; expected a results.csv written by python -m qexp.report.")
    frame = pd.read_csv(path)
    # pandas wrote each cell's per-layer widths as the repr of a dict.
    if "layer_bits" in frame.columns:
        frame["layer_bits"] = [ast.literal_eval(t) if isinstance(t, str) else None for t in frame["layer_bits"]]
    frame["checkpoint"] = portable_paths(frame["checkpoint"])
    return _with_none_settings(frame)


def portable_paths(paths: pd.Series) -> list[Any]:
    """Files written before paths were made relative name this checkout's absolute path: the same checkpoint."""
    return [portable_path(Path(p)) if isinstance(p, str) and p else p for p in paths]


def _with_none_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """Settings that do not apply to a cell are ``None`` (not NaN), so cells compare and group alike."""
    frame = frame.reindex(columns=[*frame.columns, *(c for c in CELL if c not in frame.columns)])
    for column in CELL:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def collect_sensitivity(directories: list[Path]) -> pd.DataFrame:
    """Rows of every ``sensitivity.json`` below ``directories`` (a cell measured twice: the newest wins)."""
    rows = []
    for directory in directories:
        for path in sorted(directory.rglob("sensitivity.json")):
            record = json.loads(path.read_text())
            setting = {key: record.get(key) or "" for key in SENSITIVITY_SETTING}
            rows += [{**row, **setting, "finished_at": record.get("finished_at", "")} for row in record["rows"]]
    return newest_per_probe(pd.DataFrame(rows))


def newest_per_probe(frame: pd.DataFrame) -> pd.DataFrame:
    """One sensitivity row per layer, width and setting (the newest wins), layers in the network's order."""
    if frame.empty:
        return frame
    order = {layer: index for index, layer in enumerate(dict.fromkeys(frame["layer"]))}
    frame = frame.sort_values("finished_at", kind="stable")
    frame = frame.drop_duplicates(subset=["layer", "bits", "quantized", *SENSITIVITY_SETTING], keep="last")
    return frame.sort_values(["layer", "bits", "quantized"], key=lambda c: c.map(order) if c.name == "layer" else c)


def read_sensitivity(path: Path) -> pd.DataFrame:
    """The frame that ``collect_sensitivity`` gave when it wrote ``path``; empty when there is no such file."""
    if not path.is_file():
        return pd.DataFrame()
    frame = pd.read_csv(path)
    frame = frame.reindex(columns=[*frame.columns, *(c for c in SENSITIVITY_SETTING if c not in frame.columns)])
    frame[SENSITIVITY_SETTING] = frame[SENSITIVITY_SETTING].fillna("")  # written as "" by collect_sensitivity
    frame["checkpoint"] = portable_paths(frame["checkpoint"])
    return frame


def variant(row: pd.Series) -> str:
    """Row label of the comparison table: method, observer and what differs from WbAb."""
    if is_float16(row):
        return "PyTorch · float16"
    method = METHOD_NAMES.get(row["quant"], row["quant"])
    if row.get("flow") == "pt2e":
        method += " pt2e"
    label = f"{method} · {row['observer']}"
    if row["a_bits"] != row["w_bits"]:
        label += f" · A{row['a_bits']}"
    if row.get("first_last_bits") is not None:
        label += f" · first/last {int(row['first_last_bits'])} bit"
    if row.get("granularity") == "per_tensor":
        label += " · per-tensor W"
    if row.get("recovery") is not None:
        label += f" · {row['recovery']}"
    if row.get("average_bits") is not None:
        label += f" · mixed {row['average_bits']:g} bits/weight"
    if row.get("shared_activations"):
        label += " · shared grids"
    if row.get("weight_grid") == "full":
        label += f" · {FULL_RANGE}"
    return label


def cell_name(row: pd.Series) -> str:
    """A cell named on its own, outside a table with a column per width: ``ours · mse · W4``."""
    if row["quant"] == "none":
        return "FP32"
    if is_float16(row) or row.get("average_bits") is not None:
        return variant(row)
    return f"{variant(row)} · W{row['w_bits']}"


def is_float16(row: pd.Series) -> bool:
    """PyTorch's 16-bit cell: the model cast to float16 (PyTorch has no int16 convolution)."""
    return row["quant"] == "torch_ptq" and row["w_bits"] == 16 and row.get("flow") != "pt2e"


def float16_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """PyTorch's float16 cells (``is_float16``)."""
    return frame[pd.Series([is_float16(row) for _, row in frame.iterrows()], index=frame.index, dtype=bool)]


def ok_cells(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def fp32_cell(frame: pd.DataFrame) -> pd.Series | None:
    """The FP32 reference cell (``quant=none``), or None when the report has none."""
    fp32 = ok_cells(frame)[ok_cells(frame)["quant"] == "none"]
    return fp32.iloc[0] if len(fp32) else None


def recipe(row: pd.Series) -> str | None:
    """What a cell of our PTQ adds to round-to-nearest, as the recovery table names it; None: nothing.

    The recovery recipe, and the grids that change what is quantized: the full-range weight grid
    (four levels at 2 bits) and shared activation grids.
    """
    parts = [FULL_RANGE] if row.get("weight_grid") == "full" else []
    if row.get("shared_activations"):
        parts.append("shared grids")
    if row.get("recovery") is not None:
        parts.append(row["recovery"])
    return " + ".join(parts) or None


def recipes(frame: pd.DataFrame) -> pd.Series:
    """``recipe`` of every cell (an empty frame gives an empty series)."""
    return pd.Series([recipe(row) for _, row in frame.iterrows()], index=frame.index, dtype=object)


def round_to_nearest(frame: pd.DataFrame) -> pd.DataFrame:
    """Our PTQ with nothing added: per-channel narrow weight grids, one grid per reader, no recovery, no mixed
    or first/last widths."""
    return frame[
        (frame["quant"] == "custom_ptq")
        & recipes(frame).isna()
        & frame["first_last_bits"].isna()
        & frame["average_bits"].isna()
        & (frame["granularity"] == "per_channel")
    ]


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


def recovery_rows(frame: pd.DataFrame) -> tuple[list[tuple[int, int]], list[tuple[str, pd.DataFrame]]]:
    """What the recovery table and panel show: the ``(w_bits, a_bits)`` settings a recipe or QAT ran at
    (widest first), and ``(label, ok cells)`` per observer: round-to-nearest (where it ran at one of
    them), then each recipe and QAT (``+ QAT``, or ``+ recipe + QAT`` when QAT started from a recipe) in
    order of its top-1 at the first setting it has. Labels name the observer only when there is more
    than one.
    """
    ok = ok_cells(frame)
    recovered = with_recovery(ok)
    qat = qat_cells(ok)
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
        rows.append((f"{prefix}round-to-nearest", baseline[baseline["observer"] == observer]))
        rows += sorted(rows_of_recipes, key=lambda item: first_top1(item[1]))
    return settings, [(label, cells) for label, cells in rows if first_top1(cells) != float("inf")]


def uniform(cells: pd.DataFrame, bits: int) -> pd.DataFrame:
    """The cells with weights and activations at ``bits``."""
    return cells[(cells["w_bits"] == bits) & (cells["a_bits"] == bits)]


def at_setting(cells: pd.DataFrame, setting: tuple[int, int]) -> pd.Series | None:
    """The first of ``cells`` with ``(w_bits, a_bits) == setting``, or None."""
    match = cells[(cells["w_bits"] == setting[0]) & (cells["a_bits"] == setting[1])]
    return match.iloc[0] if len(match) else None


def pytorch_int8(frame: pd.DataFrame, flow: str) -> pd.DataFrame:
    """PyTorch's W8A8 cells of one flow (``fx``: results written before ``flow`` existed count as FX)."""
    torch_cells = frame[(frame["quant"] == "torch_ptq") & (frame["w_bits"] == 8) & (frame["a_bits"] == 8)]
    is_pt2e = torch_cells["flow"] == "pt2e"
    return torch_cells[is_pt2e if flow == "pt2e" else ~is_pt2e]


def best(cells: pd.DataFrame) -> pd.Series | None:
    """The ok cell with the highest top-1 (the first in report order on a tie), or None."""
    cells = ok_cells(cells)
    return cells.sort_values("top1", ascending=False, kind="stable").iloc[0] if len(cells) else None


def exported_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells that ran with ``export=onnx`` (their model on ONNX Runtime, or the reason it could not be)."""
    if not has(frame, "onnx_status"):
        return frame.iloc[:0]
    ok = ok_cells(frame)
    return ok[ok["onnx_status"].notna()]


def has(frame: pd.DataFrame, column: str) -> bool:
    """Whether any cell records ``column`` (fields added later are absent from older results)."""
    return column in frame.columns and bool(frame[column].notna().any())
