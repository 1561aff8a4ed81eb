"""The cells of a report: collected from sweeps' ``result.json`` files, or read back from ``results.csv``.

Both give the same frame (one row per cell, ``None`` where a setting does not apply), so every
table and plot can be made from either: the committed report and the README's tables are
regenerated from the committed ``results.csv`` without the sweep directories. Here a row is read,
told apart from the others (``cell_identity``), merged with newer runs (``merge``) and named
(``variant``, ``cell_name``, ``recipe``); which rows a table shows is ``selection.py``'s.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pandas as pd

from qexp.cells.provenance import portable_path

CELL = [
    "quant", "flow", "w_bits", "a_bits", "observer", "granularity", "first_last_bits", "recovery", "average_bits",
    "shared_activations", "weight_grid", "calib_seed", "data", "checkpoint",
]  # fmt: skip
SENSITIVITY_SETTING = ["observer", "granularity", "recovery", "checkpoint", "data", "weight_grid"]
FULL_RANGE = "full-range weights"  # quant.weight_grid=full: four levels at 2 bits, one more than narrow at any width
PER_READER = "grid per reader"  # quant.shared_activations=false: one activation quantizer per reading layer
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
    """The cells of a ``results.csv`` and of newer sweeps together: one row per cell, the newest winning.

    A cell is its ``cell_identity``, as in ``collect``. Across the two sides a row also gives way to a
    newer row of the same settings (``CELL``), whatever their keys: rows written before the key existed
    have none, and the key changes with ``RESULT_SCHEMA`` and the config's layout as well as with the
    settings, so a grid re-run by newer code would otherwise stand beside the committed rows under the
    same labels and a table would show either. On a tie the sweep's row wins; a committed exported twin
    newer than the sweep's plain run of it stays. Within one side, rows of the same settings under other
    keys stay apart, as in ``collect``.

    Every cell must measure the same checkpoint on the same test split, or one table would mix
    models: their FP32 top-1 is the fingerprint, and cells that disagree on it are a ``ValueError``.
    So a row only gives way to a row of its checkpoint: the path is one of the settings, and a
    checkpoint retrained in place measures another FP32 top-1.
    """
    committed, new = _with_none_settings(committed), _with_none_settings(new)
    frame = pd.concat([committed, new], ignore_index=True)
    fp32 = sorted(set(frame.loc[frame["status"] == "ok", "fp32_top1"].dropna().round(4)))
    if len(fp32) > 1:
        raise ValueError(
            f"the cells to merge measured FP32 top-1 {fp32}: they come from different checkpoints or test splits; "
            "report them apart (a new checkpoint needs its own sweeps, not the committed cells)."
        )
    new = _with_export_of_twin(new, committed)
    kept = [committed[~_give_way(committed, new, on_tie=True)], new[~_give_way(new, committed, on_tie=False)]]
    return newest_per_cell(pd.concat(kept, ignore_index=True))


def _give_way(rows: pd.DataFrame, others: pd.DataFrame, on_tie: bool) -> pd.Series:
    """Which of ``rows`` a newer row of ``others`` with the same settings replaces (one as old: ``on_tie``).

    ``finished_at`` is ISO 8601 in UTC, so its text sorts as time does; a row without one is the oldest.
    """
    ours = _finished(rows)
    theirs = settings_key(rows).map(_finished(others).groupby(settings_key(others)).max()).astype(object)
    newer = theirs.notna() & (theirs.fillna("") > ours)
    return (newer | (theirs == ours)) if on_tie else newer


def _finished(frame: pd.DataFrame) -> pd.Series:
    times = frame["finished_at"].astype(object)
    return times.where(times.notna(), "")


def settings_key(frame: pd.DataFrame) -> pd.Series:
    """The ``CELL`` settings of each cell as one string; 8.0 (a CSV column with blanks) reads as 8.

    Partly display text (``recovery`` and ``data`` are labels), so cells are told apart by
    ``cell_identity``; the settings only stand in where no key can: rows written before it existed, and
    a cell re-keyed by newer code (``merge``).
    """

    def text(value: Any) -> str:
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    keys = ["|".join(text(value) for value in row) for row in frame[CELL].itertuples(index=False)]
    return pd.Series(keys, index=frame.index, dtype=object)


def cell_identity(frame: pd.DataFrame) -> pd.Series:
    """What makes rows one cell: its ``cell_key`` (``cache.cell_key``, the content hash of every setting, the
    checkpoint's bytes and the result schema), or, for a row written before the key existed, its
    ``settings_key``. A 1-epoch QAT wiring check is not the 15-epoch cell, though the tables label both alike.
    """
    keys = frame["cell_key"].astype(object)
    return keys.where(keys.notna(), settings_key(frame))


def newest_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (``cell_identity``), the newest ``finished_at`` winning, sorted for reading."""
    frame = frame.reindex(columns=sorted({*CELL, "finished_at", "cell_key", *frame.columns}))
    frame = _with_none_settings(frame)
    # An exported cell (export=onnx) has its twin's key: the newer of the two is shown, never older numbers.
    frame = frame.assign(_identity=cell_identity(frame))
    frame = frame.sort_values("finished_at", kind="stable")  # on a tie the later row (a sweep's, in merge) wins
    newest = _with_export_of_twin(frame.drop_duplicates("_identity", keep="last").drop(columns="_identity"), frame)
    return newest.sort_values(
        ["quant", "observer", "w_bits", "a_bits"], ascending=[True, True, False, False], kind="stable"
    )


def _with_export_of_twin(rows: pd.DataFrame, twins: pd.DataFrame) -> pd.DataFrame:
    """``rows``, each not exported one with the ONNX fields of its newest exported twin in ``twins`` that has its top-1.

    A twin is a row of the same ``cell_identity``. The same key and the same top-1 are the same model, so its
    ONNX measurement still stands: a demo that re-runs the grid does not wipe the ONNX table. A re-run with
    other numbers shows none (they would be older).
    """
    if "onnx_status" not in twins.columns:
        return rows
    onnx = [column for column in twins.columns if column.startswith("onnx_") or column == "export"]
    exported = twins[twins["onnx_status"].notna()].sort_values("finished_at", kind="stable")
    exported = exported.set_index(cell_identity(exported)).pipe(lambda f: f[~f.index.duplicated(keep="last")])
    rows = rows.reindex(columns=list(dict.fromkeys([*rows.columns, *onnx]))).astype(dict.fromkeys(onnx, object))
    for index, identity in cell_identity(rows).items():
        lends = identity in exported.index and exported.at[identity, "top1"] == rows.at[index, "top1"]
        if lends and pd.isna(rows.at[index, "onnx_status"]):
            rows.loc[index, onnx] = exported.loc[identity, onnx].to_numpy()
    return rows.astype({column: twins[column].dtype for column in onnx})


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
    if per_reader(row):
        label += f" · {PER_READER}"
    if row.get("weight_grid") == "full":
        label += f" · {FULL_RANGE}"
    return label


def per_reader(row: pd.Series) -> bool:
    """Whether a cell of ours gave every reader of a tensor its own activation grid (``shared_activations``
    false); shared grids are the default, and PyTorch's cells record nothing (None, or NaN in a CSV)."""
    value = row.get("shared_activations")
    return value is not None and not pd.isna(value) and not bool(value)


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


def recipe(row: pd.Series) -> str | None:
    """What a cell of our PTQ adds to round-to-nearest, as the recovery table names it; None: nothing.

    The recovery recipe, and the grids that change what is quantized: the full-range weight grid
    (four levels at 2 bits) and one activation grid per reader instead of the shared default.
    """
    parts = [FULL_RANGE] if row.get("weight_grid") == "full" else []
    if per_reader(row):
        parts.append(PER_READER)
    if row.get("recovery") is not None:
        parts.append(row["recovery"])
    return " + ".join(parts) or None


def recipes(frame: pd.DataFrame) -> pd.Series:
    """``recipe`` of every cell (an empty frame gives an empty series)."""
    return pd.Series([recipe(row) for _, row in frame.iterrows()], index=frame.index, dtype=object)


def has(frame: pd.DataFrame, column: str) -> bool:
    """Whether any cell records ``column`` (fields added later are absent from older results)."""
    return column in frame.columns and bool(frame[column].notna().any())
