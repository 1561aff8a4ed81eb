"""``python -m qexp.sensitivity``: quantize one layer at a time and measure what each layer costs.

A whole-network number says *that* 4- or 2-bit quantization hurts, not *where*. Here every
conv/linear layer is quantized alone -- its weights (per channel, with the configured observer),
with its input activation at 16 bits (weights alone) or at the same width -- while the rest of
the network stays float. Each cell records the test top-1 drop from FP32 and the SQNR of the
logits, ``10 log10(sum y^2 / sum (y - y_q)^2)`` in dB. Calibration uses the calibration images
(training data); the test split is only measured. ``quant.equalize``, ``bias_correction`` and
``reconstruct`` apply when set; ``first_last_bits`` and ``average_bits`` are ignored. With
``reconstruct=block`` a layer inside a residual block has its rounding fitted to that block's
output (BRECQ's objective), the block's add staying float like the rest of the network, so that
each row still costs one layer; the stem and the classifier are units of their own. Each row
names the unit it was fitted to (``reconstruction_unit``, null without reconstruction). Writes
``sensitivity.json`` into the output directory; ``python -m qexp.report`` turns it into a table
and a plot.
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
from torch import nn

from qexp.atomic import write_atomically
from qexp.cells.evaluate import accuracy, predict, sqnr_db
from qexp.cells.provenance import portable_path, run_record
from qexp.cells.weights import checkpoint_path, load_trained
from qexp.data import CIFAR10DataModule
from qexp.errors import exit_on_user_error
from qexp.quant import (
    PTQConfig,
    check_bits,
    layer_names,
    ptq_config,
    quantize_model,
    reconstruction_units,
    recovery,
    weight_grid,
)

log = logging.getLogger(__name__)

INPUT_BITS = {"weights": 16, "weights+input": None}  # the layer's input: at 16 bits, or (None) at the weight width


def layer_sensitivity(
    model: nn.Module, configs: dict[tuple[int, str], PTQConfig], datamodule: CIFAR10DataModule
) -> list[dict[str, Any]]:
    """One row per (layer, config): ``configs`` maps ``(bits, what is quantized)`` to the PTQ settings."""
    test = datamodule.splits["test"]
    reference = predict(model, test, datamodule.normalize, datamodule.eval_batch_size)
    fp32 = accuracy(reference, test.labels)
    batches = list(datamodule.calibration_batches(torch.device("cpu")))
    rows = []
    for layer in layer_names(model):
        for (bits, what), config in configs.items():
            quantized, _ = quantize_model(model, config, batches, only=[layer])
            logits = predict(quantized, test, datamodule.normalize, datamodule.eval_batch_size)
            top1 = accuracy(logits, test.labels)
            row = {"layer": layer, "bits": bits, "quantized": what, "top1": top1, "drop": fp32 - top1}
            row.update(sqnr_db=sqnr_db(reference, logits), fp32_top1=fp32, a_bits=config.a_bits)
            row["reconstruction_unit"] = reconstruction_unit(quantized, model, config)
            rows.append(row)
            log.info("%-16s W%d %-13s top-1 %.2f, SQNR %.1f dB", layer, bits, what, top1, row["sqnr_db"])
    return rows


def reconstruction_unit(quantized: nn.Module, model: nn.Module, config: PTQConfig) -> str | None:
    """What a one-layer probe's rounding was fitted to: the layer, its residual block, or None (round to nearest)."""
    if config.reconstruction is None:
        return None
    (unit,) = reconstruction_units(quantized, model, config.reconstruction.unit)
    return unit


def run(cfg: DictConfig) -> dict[str, Any]:
    """Measure every layer at every width in ``cfg.bits``; return the record written to ``sensitivity.json``."""
    start = time.perf_counter()
    widths = list(cfg.bits) if OmegaConf.is_list(cfg.bits) else [cfg.bits]
    for bits in widths:
        check_bits(bits, "bits")
    configs = {}
    for bits in widths:
        for what, input_bits in INPUT_BITS.items():
            layer_only = {"w_bits": bits, "a_bits": input_bits or bits, "first_last_bits": None, "average_bits": None}
            quant = OmegaConf.merge(cfg.quant, layer_only)
            configs[bits, what] = ptq_config(quant)
    checkpoint = checkpoint_path(cfg.checkpoint)
    model, _, datamodule = load_trained(cfg, checkpoint)
    rows = layer_sensitivity(model, configs, datamodule)
    record = {
        "rows": rows,
        "observer": cfg.quant.observer,
        "granularity": cfg.quant.granularity,
        "recovery": recovery(cfg.quant),
        "weight_grid": weight_grid(cfg.quant),
        "checkpoint": portable_path(checkpoint),
        "data": cfg.data.get("label") or cfg.data.source,
        **run_record(cfg, start),
    }
    path = Path(cfg.output_dir) / "sensitivity.json"
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="sensitivity")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():  # a bad width, observer or path: one line; any other error keeps its traceback
        record = run(cfg)
    log.info("%d cells in %.0f s -> %s", len(record["rows"]), record["seconds"], cfg.output_dir)


if __name__ == "__main__":
    main()
