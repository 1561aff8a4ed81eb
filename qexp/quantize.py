"""``python -m qexp.quantize``: load a checkpoint, quantize it, evaluate it, write ``result.json``.

Glue only. Every run -- including one that fails or asks for something PyTorch cannot do --
writes one complete ``result.json`` (status ``ok``, ``unsupported`` or ``failed``) into its Hydra
output directory, so a multirun sweep always finishes and the report sees every cell. A cell
whose ``result.json`` is already ``ok`` for the same config and checkpoint is not run again
(``redo=true`` forces it), so a killed sweep re-run into the same directory loses at most the
cell in flight -- and of a QAT cell, which checkpoints every epoch, at most the epoch in flight.
What is written is the record ``qexp.cells.result.Result``: ``new_result`` starts it from the config,
``measure`` fills in what the cell measures, ``run`` adds the outcome and provenance.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch import nn

from qexp.atomic import write_atomically
from qexp.cells.cache import cached_reference, cell_key, finished_result
from qexp.cells.evaluate import Predictions, classify
from qexp.cells.provenance import git_commit, hardware, portable_config, portable_path, versions
from qexp.cells.result import ABSENT, QUANTIZED_MODEL, Result
from qexp.cells.weights import checkpoint_path, load_trained
from qexp.data import Split
from qexp.errors import EXIT_USER_ERROR, QexpError
from qexp.quant import (
    Unsupported,
    check_supported,
    layer_bits,
    payload_bytes,
    quantize,
    recovery,
    serialized_bytes,
    weight_grid,
)
from qexp.quant.export.deploy import check_export, export_fields

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Quantize and evaluate as ``cfg`` says; return the result record (also written to ``result.json``)."""
    start = time.perf_counter()
    checkpoint = checkpoint_path(cfg.checkpoint)
    path = Path(cfg.output_dir) / "result.json"
    key = cell_key(cfg, checkpoint)
    done = None if cfg.redo else finished_result(path, key, cfg.get("export"))
    if done is not None:
        log.info("%s is done for this config and checkpoint; not run again (redo=true runs it)", path)
        return done
    result = new_result(cfg, checkpoint)
    try:
        check_supported(cfg.quant)
        check_export(cfg.get("export"))
        measure(result, cfg, checkpoint, key, start)
        result.status = "ok"
    except Unsupported as error:
        result.status, result.reason = "unsupported", str(error)
    except QexpError as error:  # the user's input: the message says all, a traceback would be noise
        result.reason, result.user_error = str(error), True
    except Exception as error:  # a fault of qexp or a library, a plain ValueError included: keep the trace
        result.reason = f"{type(error).__name__}: {error}"
        log.error("cell failed:\n%s", traceback.format_exc())
    if result.seconds is ABSENT:  # a cell that did not finish: the time until it stopped
        result.seconds = round(time.perf_counter() - start, 2)
    result.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result.cell_key, result.config, result.git = key, portable_config(cfg), git_commit()
    result.versions, result.hardware, result.threads = versions(), hardware(), torch.get_num_threads()
    written = result.to_dict()
    write_result(path, written)
    return written


def new_result(cfg: DictConfig, checkpoint: Path) -> Result:
    """What the cell is, from its config, before any work: status ``failed`` until it has been measured."""
    quant = cfg.quant
    none = quant.method == "none"
    return Result(
        quant=quant.method,
        bits=32 if none else cfg.bits,
        w_bits=quant.w_bits,
        a_bits=quant.a_bits,
        observer="none" if none else quant.observer,
        granularity=quant.granularity,
        first_last_bits=quant.get("first_last_bits"),
        flow=quant.get("flow"),
        recovery=recovery(quant),
        average_bits=quant.get("average_bits"),
        shared_activations=quant.get("shared_activations"),  # None: a method without our activation grids
        weight_grid=weight_grid(quant),
        export=cfg.get("export"),
        calib_seed=cfg.data.get("calib_seed"),
        checkpoint=portable_path(checkpoint),
        data=cfg.data.get("label") or cfg.data.source,  # known even when nothing is evaluated
    )


def measure(result: Result, cfg: DictConfig, checkpoint: Path, key: str, start: float) -> None:
    """Fill ``result`` with what the cell measures: load, the float model's figures, quantize, evaluate, export.

    ``start`` is when the cell began: ``seconds`` is its own work, taken before an export's.
    """
    model, meta, datamodule = load_trained(cfg, checkpoint)
    test = datamodule.splits["test"]
    result.checkpoint_test_top1 = meta.get("test_top1")
    batch_size = datamodule.eval_batch_size

    def evaluated(network: nn.Module, split: Split) -> Predictions:
        return classify(network, split, datamodule.normalize, batch_size)

    def measured_once(split: Split, measure_fields: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The float model's fields on ``split``, measured once per checkpoint and split (``cached_reference``)."""
        return cached_reference(Path(cfg.cache_dir), checkpoint, split, batch_size, measure_fields)

    def float_top1(split: Split, name: str) -> float:
        return measured_once(split, lambda: {name: evaluated(model, split).top1})[name]

    reference = measured_once(
        test, lambda: {"fp32_top1": evaluated(model, test).top1, "fp32_size_bytes": serialized_bytes(model)}
    )
    result.fp32_top1, result.fp32_size_bytes = reference["fp32_top1"], reference["fp32_size_bytes"]
    # Measured before quantizing, on the float model: the second test set and the validation split
    # (the 5 000 training images the checkpoint never saw, on which settings are chosen; never test).
    extra_test, val = datamodule.splits.get("extra_test"), datamodule.splits.get("val")
    if extra_test is not None:
        result.extra_test_fp32_top1 = float_top1(extra_test, "extra_test_fp32_top1")
    if val is not None:
        result.fp32_val_top1 = float_top1(val, "fp32_val_top1")
    # QAT checkpoints into a folder of its own cell (same config and checkpoint), so re-running the cell
    # continues it and another cell in the same directory never resumes from it; redo=true starts afresh.
    workdir = Path(cfg.output_dir) / "qat" / key[:16]
    quantized = quantize(model, cfg.quant, datamodule, workdir=workdir, resume=not cfg.redo)
    if not quantized.observed:
        result.observer = "none"  # a cast, nothing is observed: one cell whatever the observer
    on_test = evaluated(quantized.model, test)
    result.top1, result.test_images, result.test_correct = on_test.top1, on_test.images, on_test.correct()
    if val is not None:
        result.val_top1, result.val_images = evaluated(quantized.model, val).top1, len(val)
    if extra_test is not None:
        on_extra = evaluated(quantized.model, extra_test)
        result.extra_test_top1, result.extra_test_stderr = on_extra.top1, on_extra.stderr
        result.extra_test_label = datamodule.extra_test_label
    result.method_fields = quantized.method_fields or ABSENT
    result.reason, result.size_bytes, result.calib_images = quantized.note, quantized.size_bytes, quantized.calib_images
    result.payload_bytes, result.layer_bits = payload_bytes(quantized.model), layer_bits(quantized.model)
    result.seconds = round(time.perf_counter() - start, 2)  # the cell's own work, not an export's
    if cfg.quant.method in ("custom_ptq", "qat"):  # python -m qexp.anatomy measures it again, layer by layer
        save_quantized_model(Path(cfg.output_dir) / QUANTIZED_MODEL, quantized.model)
    if cfg.get("export"):  # last: an export that fails fails the cell, so a re-run does it again
        result.onnx = export_fields(
            cfg.quant.method, quantized.model, model, test, on_test, Path(cfg.output_dir), datamodule.normalization
        )


def save_quantized_model(path: Path, model: nn.Module) -> None:
    """Keep a cell's quantized model (its ``state_dict``; ``qexp.report.anatomy.load_cell_model`` rebuilds the
    structure from the cell's config), written atomically like ``result.json``."""
    state = model.state_dict()
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON atomically: a reader never sees half a file."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=str)))


def describe(result: dict[str, Any]) -> str:
    cell = f"{result['quant']} W{result['w_bits']}A{result['a_bits']} {result['observer']}"
    if result["status"] != "ok":
        return f"{cell}: {result['status']} -- {result['reason']}"
    line = (
        f"{cell}: top-1 {result['top1']:.2f} % (fp32 {result['fp32_top1']:.2f} %), "
        f"{result['size_bytes']:,} bytes (fp32 {result['fp32_size_bytes']:,}), {result['seconds']:.1f} s"
    )
    if result.get("onnx_status") == "ok":
        line += (
            f"; ONNX Runtime top-1 {result['onnx_top1']:.2f} % ({result['onnx_agreement']:.2f} % same class), "
            f"{result['onnx_integer_kernels']} integer kernels, "
            f"{result['onnx_ms_batch1']:.2f} ms at batch 1 (fp32 {result['onnx_fp32_ms_batch1']:.2f} ms)"
        )
    elif result.get("onnx_status"):
        line += f"; ONNX: {result['onnx_status']} -- {result['onnx_reason']}"
    return line


@hydra.main(version_base="1.3", config_path="../conf", config_name="quantize")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    log.info(describe(result))
    if result["status"] == "failed" and HydraConfig.get().mode != RunMode.MULTIRUN:
        print(f"error: {result['reason']}", file=sys.stderr, flush=True)
        # A QexpError's reason is its message alone; anything else was recorded as "<Type>: message"
        # with its traceback in the log: a fault of qexp or a library, not of the user's input.
        raise SystemExit(EXIT_USER_ERROR if result.get("user_error") else 1)


if __name__ == "__main__":
    main()
