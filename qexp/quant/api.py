"""The one quantization API that the entry points call: check a cell, quantize a model, describe it.

A cell is ``quant`` (``conf/quant/*.yaml`` after Hydra composed it): ``method`` none, custom_ptq
(ours, ``custom/``), torch_ptq (PyTorch's, ``pytorch/``, ``flow`` fx or pt2e) or qat (ours fine-tuned,
``qat/``), the widths, the observer and the recovery options. ``check_supported`` turns a cell away
before any work; ``quantize`` returns the quantized model with its stored size and what went into it.
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig
from torch import nn

from qexp.cells.evaluate import classify
from qexp.cells.result import Pt2eFields, QATFields
from qexp.data import CIFAR10DataModule
from qexp.errors import QexpError
from qexp.quant.core.affine import check_bits
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.custom.reconstruct import ReconstructionConfig
from qexp.quant.export.packed import integer_export, serialized_bytes
from qexp.quant.pytorch import fx, pt2e
from qexp.quant.pytorch.float16 import FP16_REASON, stored_float16, to_float16
from qexp.quant.qat.finetune import QATConfig, fine_tune

METHODS = ("none", "custom_ptq", "torch_ptq", "qat")
FLOWS = ("fx", "pt2e")


class Quantized(NamedTuple):
    """A quantized model and what ``result.json`` reports of it: stored size, calibration images, a note."""

    model: nn.Module
    size_bytes: int
    calib_images: int
    note: str
    method_fields: Pt2eFields | QATFields | None = None  # what only this method measures (``qexp.cells.result``)
    observed: bool = True  # False: nothing was observed (a cast), so the cell has no observer


def check_supported(quant: DictConfig) -> None:
    """Turn a cell away before any work: ``QexpError`` for what qexp does not know, ``Unsupported`` for what it lacks.

    Checks the method, the widths, QAT's training settings and, for PyTorch's PTQ, the flow and
    what that flow offers. Our PTQ's other settings are checked when ``ptq_config`` builds them.
    """
    if quant.method not in METHODS:
        raise QexpError(f"quant.method={quant.method!r} is not known; expected one of {METHODS}.")
    if quant.method == "none":
        return
    check_bits(quant.w_bits, "quant.w_bits")
    check_bits(quant.a_bits, "quant.a_bits")
    if quant.method == "qat":
        qat_config(quant)
    if quant.method != "torch_ptq":
        return
    if quant.flow not in FLOWS:
        raise QexpError(f"quant.flow={quant.flow!r} is not known; expected one of {FLOWS}.")
    flow = pt2e if quant.flow == "pt2e" else fx
    flow.check_supported((quant.w_bits, quant.a_bits), quant.observer, quant.granularity)


def quantize(
    model: nn.Module,
    quant: DictConfig,
    datamodule: CIFAR10DataModule,
    *,
    workdir: Path | None = None,
    resume: bool = True,
) -> Quantized:
    """The quantized model for ``quant.method``, its stored size and what went into it.

    ``check_supported(quant)`` has already turned away what cannot be done. Calibration uses
    ``datamodule``'s calibration images (training data); pt2e also reads the test split, for the
    top-1 of its reference graph and an example batch to compile with. QAT trains on the
    training split and validates on the validation split, which must be one the model was trained
    without: ``qexp.cells.weights.load_trained`` checks that against the weight file before a model gets
    here (this package knows nothing of weight files). QAT checkpoints into ``workdir`` and, with
    ``resume``, continues from the checkpoint there. Calibration runs where ``model``'s parameters
    are; PyTorch's int8 flows run on the CPU, the only device their x86 kernels have.
    """
    if quant.method == "none":
        return Quantized(model, serialized_bytes(model), 0, "fp32 reference")
    if quant.method == "custom_ptq":
        batches = datamodule.calibration_batches(next(model.parameters()).device)
        quantized, images = quantize_model(model, ptq_config(quant), batches)
        return Quantized(quantized, serialized_bytes(integer_export(quantized)), images, "")
    if quant.method == "qat":
        assert workdir is not None, "QAT needs a directory for its checkpoints"
        return quantize_with_qat(model, quant, datamodule, workdir, resume)
    if quant.get("flow") == "pt2e":
        return quantize_with_pt2e(model, quant, datamodule)
    if (quant.w_bits, quant.a_bits) == (8, 8):
        batches = datamodule.calibration_batches(torch.device("cpu"))
        quantized, images = fx.quantize_int8(model, batches, quant.observer, quant.granularity)
        return Quantized(quantized, serialized_bytes(quantized), images, "FX static int8, x86 backend")
    half = to_float16(model)
    return Quantized(half, serialized_bytes(stored_float16(half)), 0, FP16_REASON, observed=False)


def quantize_with_pt2e(model: nn.Module, quant: DictConfig, datamodule: CIFAR10DataModule) -> Quantized:
    """pt2e int8: the lowered model, plus the reference graph's top-1 and the time each stage took."""
    start = time.perf_counter()
    converted, images = pt2e.quantize_pt2e(model, datamodule.calibration_batches(torch.device("cpu")), quant.observer)
    prepared = time.perf_counter()
    test = datamodule.splits["test"]
    example = datamodule.normalize(test.images[: datamodule.eval_batch_size])
    lowered = pt2e.lower(converted, example)
    measured = Pt2eFields(
        export_calibrate_convert_seconds=round(prepared - start, 2),
        compile_seconds=round(time.perf_counter() - prepared, 2),
        pt2e_reference_top1=classify(
            pt2e.Graph(converted), test, datamodule.normalize, datamodule.eval_batch_size
        ).top1,
    )
    note = "pt2e static int8 (X86InductorQuantizer), lowered by torch.compile with freezing"
    return Quantized(lowered, serialized_bytes(pt2e.used_state(converted)), images, note, measured)


def quantize_with_qat(
    model: nn.Module,
    quant: DictConfig,
    datamodule: CIFAR10DataModule,
    workdir: Path,
    resume: bool,
) -> Quantized:
    """QAT: our PTQ model (exactly as ``custom_ptq`` makes it) fine-tuned with distillation from ``model``."""
    config = qat_config(quant)
    start, images = quantize_model(model, ptq_config(quant), datamodule.calibration_batches(torch.device("cpu")))
    run = fine_tune(start, model, datamodule, config, quant.trainer, workdir, resume)
    measured = QATFields(
        qat_epochs=run.epochs,
        qat_seconds=run.seconds,
        qat_chosen_epoch=run.chosen_epoch,
        qat_val_top1=run.chosen_val_top1,
        qat_val_history=run.val_top1,
        qat_start_val_top1=run.start_val_top1,
        qat_still_rising=run.still_rising,
    )
    chosen = "no validation split: last epoch" if run.chosen_val_top1 is None else "best on validation in fp32"
    chosen = f"epoch {run.chosen_epoch} ({chosen})"
    note = f"QAT from our PTQ, {run.epochs} epochs distilled from FP32, {chosen}"
    if run.still_rising:
        note += ", still rising: more epochs may help"
    return Quantized(run.model, serialized_bytes(integer_export(run.model)), images, note, measured)


def qat_config(quant: DictConfig) -> QATConfig:
    """QAT's training settings from ``conf/quant/qat.yaml``; ``QexpError`` for a value it cannot use."""
    return QATConfig(**{field.name: quant[field.name] for field in fields(QATConfig)})


def ptq_config(quant: DictConfig) -> PTQConfig:
    """Our PTQ's settings from ``conf/quant/custom_ptq.yaml``; ``QexpError`` for a value it cannot use."""
    reconstruction = None
    if quant.reconstruct:
        reconstruction = ReconstructionConfig(unit=quant.reconstruct, **quant.reconstruction)
    return PTQConfig(
        w_bits=quant.w_bits,
        a_bits=quant.a_bits,
        observer=quant.observer,
        granularity=quant.granularity,
        first_last_bits=quant.first_last_bits,
        percentile=quant.get("percentile", PTQConfig.percentile),  # conf/observer/percentile.yaml sets it
        equalize=quant.equalize,
        bias_correction=quant.bias_correction,
        reconstruction=reconstruction,
        average_bits=quant.average_bits,
        mixed_widths=tuple(quant.mixed_widths),
        shared_activations=quant.shared_activations,
        weight_grid=quant.weight_grid,
    )


def weight_grid(quant: DictConfig) -> str | None:
    """The weight grid a cell records: ``"full"``, or None for the narrow grid every older cell used (torch_ptq too)."""
    return "full" if quant.get("weight_grid") == "full" else None


def recovery(quant: DictConfig) -> str | None:
    """What a custom-PTQ cell adds to round-to-nearest, e.g. ``"CLE + BRECQ+LSQ+QDrop 2000 steps"``; None: nothing.

    A reconstruction that keeps calibration images out of its fit (``held_out``) says so: it is
    fitted on fewer images than one with ``held_out=0``, so the two are rows of their own.
    """
    parts = []
    if quant.get("equalize"):
        parts.append("CLE")
    if quant.get("reconstruct"):
        name = {"layer": "AdaRound", "block": "BRECQ"}.get(quant.reconstruct, quant.reconstruct)
        if quant.reconstruction.scale_lr > 0:
            name += "+LSQ"
        if quant.reconstruction.drop > 0:
            name += "+QDrop"
        name += f" {quant.reconstruction.steps} steps"
        held_out = quant.reconstruction.get("held_out", 0)
        if held_out:  # fitted on fewer images than the cells made before the split existed: another recipe
            name += f", {held_out:g} held out"
        parts.append(name)
    if quant.get("bias_correction"):
        parts.append("bias corr.")
    return " + ".join(parts) or None
