"""``python -m qexp.anatomy``: the figure of why 4 and 2 bits fail (``anatomy.png``) and its numbers (``anatomy.json``).

Glue only; the maths and the drawing are ``qexp/report/anatomy.py``. The range panels come from
the checkpoint's folded weights (``sensitive_layer``, ``insensitive_layer``) and from the input
of ``activation`` on the calibration images (training data), at each width of ``bits``. The
per-layer SQNR is measured on the first ``sqnr_images`` validation images (the training images
the checkpoint never saw; never test) for our PTQ at each ``settings`` width pair, quantized here
as ``quant`` says (round-to-nearest by default), and for every finished cell in ``cells`` that
kept its quantized model (BRECQ and QAT cells, whose models take too long to make here).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from qexp.atomic import write_atomically
from qexp.cells.provenance import portable_path, run_record
from qexp.cells.weights import checkpoint_path, load_trained
from qexp.errors import QexpError, exit_on_user_error
from qexp.quant import check_bits, layer_names, ptq_config, quantize_model, recovery, weight_grid
from qexp.report.anatomy import (
    LabelledModel,
    activation_grids,
    float_reference,
    layer_inputs,
    layer_sqnr,
    least_sensitive_layer,
    load_cell_model,
    model_label,
    plot_anatomy,
    read_cell,
    setting,
    weight_grids,
)
from qexp.report.cells import read_sensitivity

log = logging.getLogger(__name__)

SQNR_BATCH = 100  # validation images a forward pass holds: every layer's output of both models is kept per batch


def run(cfg: DictConfig) -> dict[str, Any]:
    """Measure and draw the figure as ``cfg`` says; return the record written to ``anatomy.json``."""
    start = time.perf_counter()
    widths = [check_bits(bits, "bits") for bits in cfg.bits]
    pairs = [(check_bits(w, "settings"), check_bits(a, "settings")) for w, a in cfg.settings]
    quants = [OmegaConf.merge(cfg.quant, {"w_bits": w_bits, "a_bits": a_bits}) for w_bits, a_bits in pairs]
    checkpoint = checkpoint_path(cfg.checkpoint)
    cells = finished_cells([Path(directory) for directory in cfg.cells], checkpoint)
    model, _, datamodule = load_trained(cfg, checkpoint)
    val = datamodule.splits.get("val")
    if val is None:
        raise QexpError("data.val_size=0 holds no validation images; the per-layer SQNR is measured on them.")
    config = ptq_config(quants[0])  # the range panels' grid, granularity and percentile
    chosen, titles = chosen_layers(cfg, layer_names(model), checkpoint)

    batches = list(datamodule.calibration_batches(torch.device("cpu")))
    references = {equalize: float_reference(model, equalize) for equalize in (False, True)}
    reference = references[config.equalize]
    weights = [
        (weight_grids(chosen[key], reference.get_submodule(chosen[key]).weight, config, widths), title)
        for key, title in titles.items()
    ]
    inputs = layer_inputs(reference, chosen["activation"], batches)
    activation = activation_grids(chosen["activation"], inputs, config, widths)
    del inputs  # a calibration set's worth of one activation

    models = []
    for quant in quants:
        quantized, _ = quantize_model(model, ptq_config(quant), batches)
        fields = cell_fields(quant)
        models.append(LabelledModel(model_label(fields), setting(fields), quantized, references[bool(quant.equalize)]))
    for directory, cell in cells.items():
        equalize = bool(cell["config"]["quant"].get("equalize"))
        loaded = load_cell_model(model, directory, cell)
        models.append(LabelledModel(model_label(cell), setting(cell), loaded, references[equalize]))
    images = val.images[: cfg.sqnr_images]
    sqnr_batches = [datamodule.normalize(images[i : i + SQNR_BATCH]) for i in range(0, len(images), SQNR_BATCH)]
    sqnr = layer_sqnr(models, sqnr_batches)

    out = Path(cfg.output_dir)
    figure = plot_anatomy(weights, (activation, ""), sqnr, widths, out)
    record = {
        "ranges": [row for tensor in [*(tensor for tensor, _ in weights), activation] for row in tensor.rows()],
        "sqnr": sqnr,
        "layers": chosen,
        "insensitive_layer_from": "config" if cfg.insensitive_layer else str(cfg.sensitivity_csv),
        "cells": [portable_path(directory) for directory in cells],
        "calib_images": sum(len(batch) for batch in batches),
        "sqnr_images": len(images),
        "figure": portable_path(figure),
        "checkpoint": portable_path(checkpoint),
        "data": cfg.data.get("label") or cfg.data.source,
        **run_record(cfg, start),
    }
    write_atomically(out / "anatomy.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return record


def finished_cells(directories: list[Path], checkpoint: Path) -> dict[Path, dict[str, Any]]:
    """Each cell's ``result.json`` (``read_cell``), refused unless it quantized ``checkpoint``: before any work."""
    cells = {directory: read_cell(directory) for directory in directories}
    for directory, cell in cells.items():
        if cell["checkpoint"] != portable_path(checkpoint):
            raise QexpError(
                f"cell {str(directory)!r} quantized checkpoint={cell['checkpoint']!r}; expected this run's "
                f"checkpoint={portable_path(checkpoint)!r}: its layers would be compared with another network's."
            )
    return cells


def chosen_layers(cfg: DictConfig, layers: list[str], checkpoint: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The layers of the range panels by their config key, and the weight panels' titles by the same keys.

    ``insensitive_layer=null`` takes the least sensitive layer of this checkpoint, observer and grid
    from ``sensitivity_csv`` (``least_sensitive_layer``).
    """
    chosen = {key: cfg[key] for key in ("sensitive_layer", "insensitive_layer", "activation")}
    titles = {"sensitive_layer": "the stem" if chosen["sensitive_layer"] == layers[0] else "sensitive"}
    titles["insensitive_layer"] = "insensitive"
    if chosen["insensitive_layer"] is None:
        quant = cfg.quant
        where = {"checkpoint": portable_path(checkpoint), "observer": quant.observer, "recovery": "",
                 "granularity": quant.granularity, "weight_grid": weight_grid(quant) or ""}  # fmt: skip
        chosen["insensitive_layer"], lowest = least_sensitive_layer(read_sensitivity(Path(cfg.sensitivity_csv)), where)
        titles["insensitive_layer"] = f"least sensitive at {lowest} bits"
    for key, name in chosen.items():
        if name not in layers:
            raise QexpError(f"{key}={name!r} is not a layer of the model; expected one of {layers}.")
    return chosen, titles


def cell_fields(quant: DictConfig) -> dict[str, Any]:
    """The ``result.json`` fields that name a model of our PTQ made here (``model_label``), as a cell records them."""
    return {
        "quant": "custom_ptq",
        "observer": quant.observer,
        "w_bits": quant.w_bits,
        "a_bits": quant.a_bits,
        "recovery": recovery(quant),
        "weight_grid": weight_grid(quant),
        "shared_activations": quant.shared_activations,
        "first_last_bits": quant.first_last_bits,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="anatomy")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():  # a bad width, layer or cell: one line; any other error keeps its traceback
        record = run(cfg)
    log.info("%s in %.0f s", record["figure"], record["seconds"])


if __name__ == "__main__":
    main()
