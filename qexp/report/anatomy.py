"""Why 4 and 2 bits fail, in one figure: the grids each observer chooses, and where along the depth the error grows.

The accuracy tables say *that* round-to-nearest breaks at 4 and 2 bits; this figure shows *why*:

* the folded weights of the most sensitive layer (the stem) and of an insensitive one, with the
  clip range and levels that minmax, percentile and mse choose at each width -- at 2 bits the
  narrow signed grid is ternary, ``{-s, 0, s}``, however the range is chosen;
* one activation, on the histogram the activation observers keep, with the ranges they choose;
* each layer's output SQNR along the depth for any quantized models (round-to-nearest, BRECQ,
  QAT ...) against the float network, so one sees where the error enters and whether it grows.

The maths are pure functions of tensors and models that use our PTQ's own pieces --
``PTQConfig.make_quantizer`` builds each observer exactly as ``quantize_model`` would (grid,
granularity, percentile), its ``clip_range`` and frozen ``scale``/``zero_point`` are the numbers
shown -- so the figure cannot disagree with the quantized models it explains. Drawing is separate
(``anatomy_figure``) and reads only what those functions return.

A finished ``python -m qexp.quantize`` cell adds its curve when it kept its quantized model
(``QUANTIZED_MODEL`` beside its ``result.json``): ``load_cell_model`` rebuilds the structure our PTQ
gives for the cell's config and loads the saved state into it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from qexp.cells.evaluate import decibels, sqnr_db
from qexp.cells.result import QUANTIZED_MODEL
from qexp.errors import QexpError
from qexp.quant import PTQConfig, layer_names, ptq_config
from qexp.quant.core.affine import dequantize
from qexp.quant.core.capture import keep_input, keep_output, record
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.core.modules import FakeQuantize, Mode
from qexp.quant.core.observers import OBSERVERS, DistributionObserver
from qexp.quant.custom.equalize import equalize_blocks
from qexp.quant.custom.ptq import insert_quantizers
from qexp.report.cells import METHOD_NAMES, recipe
from qexp.report.plots import COLOURS, RECIPE_COLOURS, pyplot, save_figure

# The quantized model a finished cell keeps beside its result.json (its state_dict), written by qexp.quantize.
OBSERVER_COLOURS = {"minmax": "tab:red", "percentile": "tab:orange", "mse": "tab:blue"}
ACTIVATION_BINS = 120  # the observers' 2048-bin histogram, re-binned for the eye
FIGURE = "anatomy.png"
SQNR_HEIGHT = 4.2  # inches: the per-layer SQNR row, its layer names written upright


# --- the grids each observer chooses -------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """One observer's grid on one tensor at one width, for the channel shown.

    ``low``/``high``: the range the observer chose (``clip_range``); ``levels``: the real value of
    every integer code, ascending (a value beyond the outer ones is clipped to them);
    ``sqnr_db``: of the whole tensor (every channel on its own grid) quantized on these grids.
    """

    observer: str
    bits: int
    low: float
    high: float
    scale: float
    zero_point: float
    levels: tuple[float, ...]
    sqnr_db: float


@dataclass(frozen=True)
class TensorGrids:
    """A tensor's distribution and each observer's grid on it at each width.

    ``values`` is 1-D: the raw values shown (one output channel of a per-channel weight, or the
    whole tensor), with ``counts`` None; or a histogram's bin centres with ``counts``. ``channel``
    is the output channel shown, None for a per-tensor grid.
    """

    layer: str
    kind: str  # "weight" or "activation" (the layer's input)
    values: Tensor
    counts: Tensor | None
    channel: int | None
    channels: int
    grids: tuple[Grid, ...]

    def rows(self) -> list[dict[str, Any]]:
        """One plain row per grid, as ``anatomy.json`` records them."""
        where = {"layer": self.layer, "kind": self.kind, "channel": self.channel, "channels": self.channels}
        return [{**where, **grid.__dict__, "levels": list(grid.levels)} for grid in self.grids]


def representative_channel(weight: Tensor) -> int:
    """The output channel (axis 0) whose largest ``|w|`` is the median of the live channels' (not all zero).

    Neither the widest channel nor a dead one, whose folded weights are all 0 (a ``bn2`` scale of
    exactly 0, ``models.dead_residual_channels``) and whose grid is degenerate; 0 if all are dead.
    """
    extent = weight.detach().flatten(1).abs().amax(dim=1)
    live = extent.nonzero().flatten()
    if len(live) == 0:
        return 0
    ordered = live[extent[live].argsort()]
    return int(ordered[(len(ordered) - 1) // 2])


def _grid(quantizer: FakeQuantize, observer: str, channel: int | None, sqnr: float) -> Grid:
    """``quantizer``'s frozen grid (for ``channel`` when it is per channel) as a ``Grid``."""
    low, high = quantizer.observer.clip_range()
    scale, zero_point = quantizer.scale, quantizer.zero_point
    if channel is not None and scale.ndim:
        low, high, scale, zero_point = low[channel], high[channel], scale[channel], zero_point[channel]
    codes = torch.arange(quantizer.qmin, quantizer.qmax + 1, dtype=scale.dtype)
    levels = dequantize(codes, scale, zero_point)
    return Grid(observer, quantizer.bits, float(low), float(high), float(scale), float(zero_point),
                tuple(levels.tolist()), sqnr)  # fmt: skip


@torch.no_grad()
def weight_grids(layer: str, weight: Tensor, config: PTQConfig, bits: Sequence[int]) -> TensorGrids:
    """Every observer's grid on a (folded) ``weight`` at each of ``bits``, as our PTQ builds the weight quantizer.

    ``config`` gives the granularity, the weight grid and the percentile (its observer and widths
    are replaced). A per-channel grid is shown for ``representative_channel``; the SQNR is the
    whole weight's.
    """
    per_channel = config.granularity == "per_channel"
    channel = representative_channel(weight) if per_channel else None
    grids = []
    for width in bits:
        for observer in OBSERVERS:
            quantizer = replace(config, observer=observer).make_quantizer(width, weight)
            quantizer.observer(weight)
            quantizer.freeze()
            quantizer.mode = Mode.QUANTIZE
            grids.append(_grid(quantizer, observer, channel, sqnr_db(weight, quantizer(weight))))
    values = weight[channel].flatten() if per_channel else weight.flatten()
    return TensorGrids(layer, "weight", values.detach().clone(), None, channel, len(weight), tuple(grids))


@torch.no_grad()
def layer_inputs(model: nn.Module, layer: str, batches: Iterable[Tensor]) -> list[Tensor]:
    """What ``layer`` of the float ``model`` reads on each batch: what its input quantizer observes when calibrating."""
    return [record(model, [layer], [batch], keep_input, stop=True)[layer] for batch in batches]


@torch.no_grad()
def activation_grids(layer: str, activations: Sequence[Tensor], config: PTQConfig, bits: Sequence[int]) -> TensorGrids:
    """Every observer's grid on the input of ``layer`` (``activations``: one tensor per calibration batch) per width.

    Each activation quantizer is built as our PTQ builds it (unsigned, per tensor) and fed the
    batches in order, as calibration feeds it, so its histogram is re-binned the same way. The
    histogram shown is the one those observers keep (``DistributionObserver``).
    """
    if not activations:
        raise ValueError(f"activations of {layer!r} is empty; expected at least one calibration batch.")
    signal = sum(float(x.pow(2).sum()) for x in activations)
    grids = []
    for width in bits:
        for observer in OBSERVERS:
            quantizer = replace(config, observer=observer).make_quantizer(width)
            for x in activations:
                quantizer.observer(x)
            quantizer.freeze()
            quantizer.mode = Mode.QUANTIZE
            noise = sum(float((x - quantizer(x)).pow(2).sum()) for x in activations)
            grids.append(_grid(quantizer, observer, None, decibels(signal, noise)))
    histogram = DistributionObserver(8, symmetric=False)
    for x in activations:
        histogram.observe(x.float())
    (centres,), (counts,) = histogram.distribution()
    return TensorGrids(layer, "activation", centres, counts, None, 1, tuple(grids))


# --- where the error grows: each layer's output SQNR ----------------------------------------------


class LabelledModel(NamedTuple):
    """A quantized model, what it is (``model_label``), its widths (``setting``, e.g. ``W4A4``), and the float
    network it approximates (``float_reference``)."""

    label: str
    setting: str
    model: nn.Module
    reference: nn.Module


def float_reference(model: nn.Module, equalize: bool) -> nn.Module:
    """The float network our PTQ quantizes: BatchNorm folded, and equalized when the model was made with ``equalize``.

    A layer's output is compared with this network's, whose layers compute what the quantized
    layers approximate (a conv followed by its BatchNorm, before the ReLU); equalization scales a
    block's ``conv1`` outputs per channel, so a model made with it is compared with an equalized one.
    """
    reference = fold_batchnorm(model)
    if equalize:
        equalize_blocks(reference)
    return reference


@torch.no_grad()
def layer_sqnr(models: Sequence[LabelledModel], batches: Iterable[Tensor]) -> list[dict[str, Any]]:
    """Each model's per-layer output SQNR (dB) against its float reference, on ``batches``.

    One row per model and conv/linear layer, in the network's order (``depth`` 0 is the stem, the
    last is the classifier, whose output is the logits). Signal and noise are summed over every
    batch before the ratio is taken, so memory holds one batch's outputs at a time, and a reference
    shared by several models runs once per batch. A layer whose output equals the reference's
    (nothing quantized before or at it) has ``inf``.
    """
    if not models:
        return []
    names = layer_names(models[0].reference)
    signal = {(index, name): 0.0 for index in range(len(models)) for name in names}
    noise = dict(signal)
    for batch in batches:
        wanted: dict[int, dict[str, Tensor]] = {}
        for index, labelled in enumerate(models):
            key = id(labelled.reference)
            if key not in wanted:
                wanted[key] = record(labelled.reference, names, [batch], keep_output)
            want, got = wanted[key], record(labelled.model, names, [batch], keep_output)
            for name in names:
                signal[index, name] += float(want[name].pow(2).sum())
                noise[index, name] += float((got[name] - want[name]).pow(2).sum())
    return [
        {"model": labelled.label, "setting": labelled.setting, "depth": depth, "layer": name,
         "sqnr_db": decibels(signal[index, name], noise[index, name])}
        for index, labelled in enumerate(models)
        for depth, name in enumerate(names)
    ]  # fmt: skip


def model_label(cell: Mapping[str, Any]) -> str:
    """What a quantized model is, from its ``result.json`` fields: ``ours · mse · round-to-nearest``, ``QAT · mse``."""
    label = f"{METHOD_NAMES.get(cell['quant'], cell['quant'])} · {cell['observer']}"
    added = recipe(cell)
    if added:
        label += f" · {added}"
    elif cell["quant"] == "custom_ptq":
        label += " · round-to-nearest"
    if cell.get("first_last_bits") is not None:
        label += f" · first/last {int(cell['first_last_bits'])} bit"
    return label


def setting(cell: Mapping[str, Any]) -> str:
    """A model's widths as a panel of the SQNR row names them: ``W2A4``."""
    return f"W{cell['w_bits']}A{cell['a_bits']}"


def least_sensitive_layer(sensitivity: pd.DataFrame, where: Mapping[str, str]) -> tuple[str, int]:
    """The layer whose weights alone cost the least top-1 at the lowest width measured, and that width.

    ``sensitivity`` is the report's ``layer_sensitivity.csv`` (``cells.read_sensitivity``).
    Only rows whose columns named in ``where`` (of ``cells.SENSITIVITY_SETTING``: checkpoint, observer, ...)
    hold its values count: another network's or another grid's sensitivity says nothing about this one.
    """
    rows = sensitivity
    if len(rows):
        rows = rows[rows["quantized"] == "weights"]
        for column, value in where.items():
            rows = rows[rows[column] == value]
    if rows.empty:
        raise QexpError(
            f"the sensitivity table has no rows of {dict(where)}; expected python -m qexp.sensitivity's rows "
            "for this checkpoint and grid (layer_sensitivity.csv), or insensitive_layer set."
        )
    bits = int(rows["bits"].min())
    lowest = rows[rows["bits"] == bits]
    return str(lowest.loc[lowest["drop"].idxmin(), "layer"]), bits


# --- finished cells that kept their model ---------------------------------------------------------


def read_cell(directory: Path) -> dict[str, Any]:
    """The ``result.json`` of a finished cell of our PTQ or QAT that kept its model; ``QexpError`` otherwise."""
    path = directory / "result.json"
    if not path.is_file():
        raise QexpError(f"cell {str(directory)!r} has no result.json; expected a python -m qexp.quantize cell.")
    cell = json.loads(path.read_text())
    if cell.get("status") != "ok" or cell.get("quant") not in ("custom_ptq", "qat"):
        raise QexpError(
            f"cell {str(directory)!r} is {cell.get('quant')!r} with status {cell.get('status')!r}; expected a "
            "finished (ok) cell of quant=custom_ptq or quant=qat."
        )
    if not (directory / QUANTIZED_MODEL).is_file():
        raise QexpError(
            f"cell {str(directory)!r} did not keep its quantized model ({QUANTIZED_MODEL}); expected a cell run by a "
            "qexp.quantize that saves it (redo=true runs a finished cell again)."
        )
    return cell


def load_cell_model(model: nn.Module, directory: Path, cell: Mapping[str, Any]) -> nn.Module:
    """The quantized model a cell kept: our PTQ's structure for the cell's config, with the saved state loaded.

    BRECQ writes its rounding into the weights and QAT hands back plain quantizers
    (``freeze_step_sizes``), so both have the structure that ``insert_quantizers`` gives the folded
    ``model`` for the cell's ``quant`` config; mixed precision's per-layer widths come from the
    cell's ``layer_bits``. Every value (weights, scales, modes) comes from the saved state.
    """
    config = ptq_config(OmegaConf.create(cell["config"]["quant"]))
    weight_bits = {name: bits[0] for name, bits in (cell.get("layer_bits") or {}).items()}
    quantized = insert_quantizers(fold_batchnorm(model), config, weight_bits=weight_bits)
    state = torch.load(directory / QUANTIZED_MODEL, map_location="cpu", weights_only=True)
    try:
        quantized.load_state_dict(state)
    except RuntimeError as error:
        raise QexpError(
            f"the model of cell {str(directory)!r} does not fit its config's structure ({error}); expected the "
            f"{QUANTIZED_MODEL} that this cell's run saved."
        ) from None
    return quantized.eval()


# --- drawing -------------------------------------------------------------------------------------


def _tensor_title(tensor: TensorGrids, bits: int, role: str) -> str:
    """Two lines: which tensor at which width, then which part of it the histogram shows."""
    name = f"{tensor.layer} ({role})" if role else tensor.layer
    if tensor.kind == "activation":
        return f"input of {name}, {bits} bits\nhistogram over the calibration images"
    shown = "the whole tensor" if tensor.channel is None else (
        f"output channel {tensor.channel} of {tensor.channels} (the median range)"
    )  # fmt: skip
    return f"{name}: folded weights, {bits} bits\n{shown}"


def _range_panel(fig, spec, tensor: TensorGrids, bits: int, role: str) -> list:
    """A histogram over a strip with one row per observer: its levels (|) on its clip range (bar), and its SQNR."""
    inner = spec.subgridspec(2, 1, height_ratios=(2.2, 1.0), hspace=0.0)
    ax = fig.add_subplot(inner[0])
    strip = fig.add_subplot(inner[1], sharex=ax)
    grids = [grid for grid in tensor.grids if grid.bits == bits]
    values, counts = tensor.values.numpy(), None if tensor.counts is None else tensor.counts.numpy()
    if counts is None:
        ax.hist(values, bins=int(np.clip(len(values) // 4, 10, 60)), color="lightgrey", edgecolor="grey")
    else:
        ax.hist(values, bins=ACTIVATION_BINS, weights=counts, color="darkgrey", log=True)
    for row, grid in enumerate(grids):
        colour = OBSERVER_COLOURS.get(grid.observer, "black")
        for end in (grid.levels[0], grid.levels[-1]):
            ax.axvline(end, color=colour, linestyle="--", linewidth=1, alpha=0.8)
        strip.hlines(row, grid.levels[0], grid.levels[-1], color=colour, linewidth=2, alpha=0.5)
        strip.plot(grid.levels, [row] * len(grid.levels), "|", color=colour, markersize=12, markeredgewidth=2)
    strip.set_yticks(range(len(grids)), [f"{grid.observer} · {grid.sqnr_db:.1f} dB" for grid in grids], fontsize=8)
    for label, grid in zip(strip.get_yticklabels(), grids, strict=True):
        label.set_color(OBSERVER_COLOURS.get(grid.observer, "black"))
    strip.set(ylim=(len(grids) - 0.5, -0.5), xlabel="activation value" if tensor.kind == "activation" else "weight")
    ax.set_ylabel("count (log)" if counts is not None else "count", fontsize=8)
    ax.tick_params(labelbottom=False)
    ax.set_title(_tensor_title(tensor, bits, role), fontsize=9)
    for axis in (ax, strip):
        axis.grid(alpha=0.3, axis="x")
    return [ax, strip]


def _colours(labels: Sequence[str]) -> dict[str, str]:
    """One colour per model label, in every panel: the report's for ours, recovery and QAT, then the recipe colours."""
    colours, others, recovered = {}, iter(RECIPE_COLOURS * len(labels)), False
    for label in labels:
        if label.startswith("QAT"):
            colours[label] = COLOURS["QAT"]
        elif "round-to-nearest" in label:
            colours[label] = COLOURS["ours"]
        elif not recovered:
            colours[label], recovered = COLOURS["ours + recovery"], True
        else:
            colours[label] = next(others)
    return colours


def _sqnr_panel(ax, rows: pd.DataFrame, colours: Mapping[str, str], layers: Sequence[str], panel: str) -> None:
    for label, part in rows.groupby("model", sort=False):
        sqnr = part["sqnr_db"].replace(math.inf, np.nan)  # an unquantized layer has no noise: no point
        ax.plot(part["depth"], sqnr, marker="o", markersize=4, color=colours[label], label=label)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
    ax.set(xlim=(-0.5, len(layers) - 0.5), ylabel="output SQNR (dB)", xlabel="layer, input to output")
    ax.set_title(f"{panel}: each layer's output vs FP32 (validation images)", fontsize=9)
    ax.grid(alpha=0.3)


def anatomy_figure(
    weights: Sequence[tuple[TensorGrids, str]],
    activation: tuple[TensorGrids, str],
    sqnr: Sequence[Mapping[str, Any]],
    bits: Sequence[int],
):
    """The figure: a row per tensor (``weights`` then ``activation``, each with its role, e.g. ``"stem"``) and a
    column per width, each panel one tensor at one width under every observer; then one panel per setting
    of the per-layer SQNR (rows of ``layer_sqnr``). Returns the matplotlib figure, not yet saved."""
    plt = pyplot()
    tensors = [*weights, activation]
    frame = pd.DataFrame(list(sqnr))
    settings = list(dict.fromkeys(frame["setting"])) if len(frame) else []
    height = 3.2 * len(tensors)
    fig = plt.figure(figsize=(6 * len(bits), height + (SQNR_HEIGHT if settings else 0)), layout="constrained")
    ranges, curves = fig.subfigures(2, 1, height_ratios=(height, SQNR_HEIGHT)) if settings else (fig, None)
    ranges.suptitle(
        "One row per observer: | its grid's levels, the bar (and the dashed lines) its clip range, beyond which "
        "values are clipped; dB: the SQNR of the whole tensor on its grids", fontsize=9,
    )  # fmt: skip
    spec = ranges.add_gridspec(len(tensors), len(bits))
    for row, (tensor, role) in enumerate(tensors):
        for column, width in enumerate(bits):
            _range_panel(ranges, spec[row, column], tensor, width, role)
    if settings:
        layers = list(dict.fromkeys(frame["layer"]))
        colours = _colours(list(dict.fromkeys(frame["model"])))
        axes = curves.subplots(1, len(settings), sharey=True, squeeze=False)[0]
        for ax, panel in zip(axes, settings, strict=True):
            _sqnr_panel(ax, frame[frame["setting"] == panel], colours, layers, panel)
        handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
        curves.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 2),
                      fontsize=8, frameon=False)  # fmt: skip
    return fig


def plot_anatomy(
    weights: Sequence[tuple[TensorGrids, str]],
    activation: tuple[TensorGrids, str],
    sqnr: Sequence[Mapping[str, Any]],
    bits: Sequence[int],
    out: Path,
) -> Path:
    """``anatomy_figure`` written to ``out/anatomy.png``."""
    out.mkdir(parents=True, exist_ok=True)
    return save_figure(anatomy_figure(weights, activation, sqnr, bits), out / FIGURE)
