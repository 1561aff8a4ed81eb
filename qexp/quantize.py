"""``python -m qexp.quantize``: load a checkpoint, quantize it, evaluate it, write ``result.json``.

Glue only. Every run -- including one that fails or asks for something PyTorch cannot do --
writes one complete ``result.json`` (status ``ok``, ``unsupported`` or ``failed``) into its Hydra
output directory, so a multirun sweep always finishes and the report sees every cell.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qexp.atomic import write_atomically
from qexp.data import CIFAR10DataModule, normalize
from qexp.errors import EXIT_USER_ERROR, QexpError
from qexp.evaluate import top1
from qexp.provenance import git_commit, hardware, versions
from qexp.quant.affine import check_bits
from qexp.quant.custom_ptq import PTQConfig, quantize_model
from qexp.quant.export import integer_export, serialized_bytes
from qexp.quant.modules import QuantLayer
from qexp.quant.pt2e import OBSERVERS as PT2E_OBSERVERS
from qexp.quant.pt2e import Graph, lower, quantize_pt2e, used_state
from qexp.quant.reconstruct import ReconstructionConfig
from qexp.quant.torch_ptq import FP16_REASON, Unsupported, int8_qconfig_mapping, quantize_int8, to_float16
from qexp.weights import SHIPPED, arch_name, load_weights

log = logging.getLogger(__name__)

METHODS = ("none", "custom_ptq", "torch_ptq")
FLOWS = ("fx", "pt2e")


class Quantized(NamedTuple):
    model: nn.Module
    size_bytes: int
    calib_images: int
    note: str
    extra: dict[str, Any] | None = None  # method-specific fields for result.json


def quantize(model: nn.Module, quant: DictConfig, datamodule: CIFAR10DataModule) -> Quantized:
    """The quantized model for ``quant.method``, its stored size and what went into it.

    ``check_supported`` has already turned away what PyTorch's PTQ cannot do.
    """
    batches = datamodule.calibration_batches(torch.device("cpu"))
    if quant.method == "none":
        return Quantized(model, serialized_bytes(model), 0, "fp32 reference")
    if quant.method == "custom_ptq":
        quantized, images = quantize_model(model, ptq_config(quant), batches)
        return Quantized(quantized, serialized_bytes(integer_export(quantized)), images, "")
    if quant.get("flow") == "pt2e":
        return quantize_with_pt2e(model, quant, datamodule)
    if (quant.w_bits, quant.a_bits) == (8, 8):
        quantized, images = quantize_int8(model, batches, quant.observer, quant.granularity)
        return Quantized(quantized, serialized_bytes(quantized), images, "FX static int8, x86 backend")
    half = to_float16(model)
    return Quantized(half, serialized_bytes(half), 0, FP16_REASON)


def quantize_with_pt2e(model: nn.Module, quant: DictConfig, datamodule: CIFAR10DataModule) -> Quantized:
    """pt2e int8: the lowered model, plus the reference graph's top-1 and the time each stage took."""
    start = time.perf_counter()
    converted, images = quantize_pt2e(model, datamodule.calibration_batches(torch.device("cpu")), quant.observer)
    prepared = time.perf_counter()
    test = datamodule.splits["test"]
    example = normalize(test.images[: datamodule.eval_batch_size])
    lowered = lower(converted, example)
    extra = {
        "export_calibrate_convert_seconds": round(prepared - start, 2),
        "compile_seconds": round(time.perf_counter() - prepared, 2),
        "pt2e_reference_top1": top1(Graph(converted), test, normalize, datamodule.eval_batch_size),
    }
    note = "pt2e static int8 (X86InductorQuantizer), lowered by torch.compile with freezing"
    return Quantized(lowered, serialized_bytes(used_state(converted)), images, note, extra)


def ptq_config(quant: DictConfig) -> PTQConfig:
    """Our PTQ's settings from ``conf/quant/custom_ptq.yaml``."""
    reconstruction = None
    if quant.reconstruct:
        reconstruction = ReconstructionConfig(unit=quant.reconstruct, **quant.reconstruction)
    return PTQConfig(
        w_bits=quant.w_bits,
        a_bits=quant.a_bits,
        observer=quant.observer,
        granularity=quant.granularity,
        first_last_bits=quant.first_last_bits,
        percentile=quant.percentile,
        equalize=quant.equalize,
        bias_correction=quant.bias_correction,
        reconstruction=reconstruction,
        average_bits=quant.average_bits,
        mixed_widths=tuple(quant.mixed_widths),
    )


def check_supported(quant: DictConfig) -> None:
    """Raise ``Unsupported`` before any work for what PyTorch's PTQ cannot do."""
    if quant.method != "torch_ptq":
        return
    bits = (quant.w_bits, quant.a_bits)
    if quant.flow not in FLOWS:
        raise ValueError(f"quant.flow={quant.flow!r} is not known; expected one of {FLOWS}.")
    if quant.flow == "pt2e":
        check_pt2e_supported(bits, quant.observer, quant.granularity)
        return
    if bits not in ((8, 8), (16, 16)):
        raise Unsupported(
            f"W{bits[0]}A{bits[1]}: torch.ao.quantization offers int8 (and float16) only; "
            "its CPU kernels have no 2-, 4- or mixed-width static quantization"
        )
    if bits == (8, 8):
        int8_qconfig_mapping(quant.observer, quant.granularity)  # raises for observers it lacks


def check_pt2e_supported(bits: tuple[int, int], observer: str, granularity: str) -> None:
    if bits != (8, 8):
        raise Unsupported(f"W{bits[0]}A{bits[1]}: the pt2e x86 Inductor quantizer is int8 only")
    if observer not in PT2E_OBSERVERS:
        raise Unsupported(
            f"observer={observer}: the x86 Inductor quantizer takes a MinMax (minmax) or Histogram (mse) "
            "activation observer; there is no percentile observer"
        )
    if granularity != "per_channel":
        raise Unsupported(f"granularity={granularity}: the x86 Inductor quantizer's weights are per channel")
    if importlib.util.find_spec("torchao") is None:
        raise QexpError("quant.flow=pt2e needs torchao, which is not installed; pip install 'torchao>=0.18'.")


def load(cfg: DictConfig, checkpoint: Path) -> tuple[nn.Module, dict[str, Any], CIFAR10DataModule]:
    """The float model in eval mode with ``checkpoint``'s weights, their metadata, and the set-up data."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = instantiate(cfg.model)
    meta = load_weights(checkpoint, model, arch_name(cfg.model))
    model.eval()
    datamodule: CIFAR10DataModule = instantiate(cfg.data)
    datamodule.setup()
    return model, meta, datamodule


def recovery(quant: DictConfig) -> str | None:
    """What a custom-PTQ cell adds to round-to-nearest, e.g. ``"CLE + BRECQ+LSQ+QDrop 2000 steps"``; None: nothing."""
    parts = []
    if quant.get("equalize"):
        parts.append("CLE")
    if quant.get("reconstruct"):
        name = {"layer": "AdaRound", "block": "BRECQ"}.get(quant.reconstruct, quant.reconstruct)
        if quant.reconstruction.scale_lr > 0:
            name += "+LSQ"
        if quant.reconstruction.drop > 0:
            name += "+QDrop"
        parts.append(f"{name} {quant.reconstruction.steps} steps")
    if quant.get("bias_correction"):
        parts.append("bias corr.")
    return " + ".join(parts) or None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Quantize and evaluate as ``cfg`` says; return the result record (also written to ``result.json``)."""
    start = time.perf_counter()
    quant = cfg.quant
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else SHIPPED
    result: dict[str, Any] = {
        "quant": quant.method,
        "bits": cfg.bits,
        "w_bits": quant.w_bits,
        "a_bits": quant.a_bits,
        "observer": quant.observer,
        "granularity": quant.granularity,
        "first_last_bits": quant.get("first_last_bits"),
        "flow": quant.get("flow"),
        "recovery": recovery(quant),
        "average_bits": quant.get("average_bits"),
        "status": "failed",
        "reason": "",
        "top1": None,
        "fp32_top1": None,
        "size_bytes": None,
        "fp32_size_bytes": None,
        "calib_images": 0,
        "seconds": None,
        "checkpoint": str(checkpoint),
        "data": cfg.data.get("label") or cfg.data.source,  # known even when nothing is evaluated
    }
    if quant.method == "none":
        result.update(bits=32, observer="none")
    try:
        if quant.method not in METHODS:
            raise ValueError(f"quant.method={quant.method!r} is not known; expected one of {METHODS}.")
        if quant.method != "none":
            check_bits(quant.w_bits, "quant.w_bits")
            check_bits(quant.a_bits, "quant.a_bits")
        check_supported(quant)
        model, meta, datamodule = load(cfg, checkpoint)
        test = datamodule.splits["test"]
        result["checkpoint_test_top1"] = meta.get("test_top1")
        result["fp32_top1"] = top1(model, test, normalize, datamodule.eval_batch_size)
        result["fp32_size_bytes"] = serialized_bytes(model)
        quantized = quantize(model, quant, datamodule)
        if quantized.note == FP16_REASON:
            result["observer"] = "none"  # a cast, nothing is observed: one cell whatever the observer
        result["top1"] = top1(quantized.model, test, normalize, datamodule.eval_batch_size)
        result.update(quantized.extra or {})
        result.update(
            status="ok", reason=quantized.note, size_bytes=quantized.size_bytes, calib_images=quantized.calib_images
        )
        result["layer_bits"] = {
            name: [m.weight_quantizer.bits, m.input_quantizer.bits]
            for name, m in quantized.model.named_modules()
            if isinstance(m, QuantLayer)
        }
    except Unsupported as error:
        result.update(status="unsupported", reason=str(error))
    except ValueError as error:  # bad user input, including QexpError
        result["reason"] = str(error)
    except Exception as error:
        result["reason"] = f"{type(error).__name__}: {error}"
        log.error("cell failed:\n%s", traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result.update(
        config=OmegaConf.to_container(cfg, resolve=True),
        git=git_commit(),
        versions=versions(),
        hardware=hardware(),
        threads=torch.get_num_threads(),
    )
    write_result(Path(cfg.output_dir) / "result.json", result)
    return result


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON atomically: a reader never sees half a file."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=str)))


def describe(result: dict[str, Any]) -> str:
    cell = f"{result['quant']} W{result['w_bits']}A{result['a_bits']} {result['observer']}"
    if result["status"] != "ok":
        return f"{cell}: {result['status']} -- {result['reason']}"
    return (
        f"{cell}: top-1 {result['top1']:.2f} % (fp32 {result['fp32_top1']:.2f} %), "
        f"{result['size_bytes']:,} bytes (fp32 {result['fp32_size_bytes']:,}), {result['seconds']:.1f} s"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="quantize")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    log.info(describe(result))
    if result["status"] == "failed" and HydraConfig.get().mode != RunMode.MULTIRUN:
        print(f"error: {result['reason']}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
