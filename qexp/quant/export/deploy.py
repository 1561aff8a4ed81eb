"""``export=onnx``: a cell's model written as an ONNX QDQ graph and run on ONNX Runtime beside our simulation.

Our PTQ's accuracy is measured with fake quantization; this is the check that an integer runtime
computes the same thing from the same scales and zero points. The cell writes ``model.onnx``
(``qexp.quant.export.qdq``), classifies the test split with ONNX Runtime, and records its top-1,
how many test images it classifies as our fake-quantized model does, how far the logits moved,
which kernels ONNX Runtime runs, and the latency of the graph and of the same float model
exported to ONNX (BatchNorm folded), one thread, batch 1 and 256.
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx
import torch
from torch import nn

from qexp.atomic import write_atomically
from qexp.cells.evaluate import Predictions
from qexp.cells.result import OnnxExport, OnnxUnsupported
from qexp.data import CIFAR10_NORMALIZATION, Normalization, Split
from qexp.errors import QexpError
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.export import onnx_runtime
from qexp.quant.export.qdq import to_onnx
from qexp.quant.unsupported import Unsupported

EXPORTS = (None, "onnx")
EXPORTABLE = ("none", "custom_ptq", "qat")  # methods whose model is ours (float, or FakeQuantize modules)
FILE = "model.onnx"


def check_export(export: str | None) -> None:
    """``QexpError`` for an export format qexp does not write."""
    if export not in EXPORTS:
        raise QexpError(f"export={export!r} is not known; expected null (no export) or 'onnx'.")


def export_fields(
    method: str,
    model: nn.Module,
    float_model: nn.Module,
    test: Split,
    simulated: Predictions,
    directory: Path,
    normalization: Normalization = CIFAR10_NORMALIZATION,
) -> OnnxExport | OnnxUnsupported:
    """Export ``model`` (``method``'s result; ``float_model`` is the checkpoint's), run it, and say what was measured.

    The graph standardises its uint8 input with ``normalization``, the one the model was trained with.

    ``simulated`` holds our model's predictions on ``test``. A model ONNX cannot carry gives
    ``OnnxUnsupported`` with the reason, and the cell stays ok; any other error is the cell's.
    """
    start = time.perf_counter()
    try:
        if method not in EXPORTABLE:
            raise Unsupported(
                f"quant.method={method!r}: only our own models export (methods {EXPORTABLE}); PyTorch's quantized "
                "modules go to ONNX through torch.onnx, with their own scales, which is not what this cell measured."
            )
        graph = to_onnx(fold_batchnorm(model) if method == "none" else model, normalization)
    except Unsupported as reason:
        return OnnxUnsupported(onnx_reason=str(reason))
    path = directory / FILE
    write_atomically(path, lambda tmp: onnx.save(graph, tmp))
    runner, kernels = onnx_runtime.session_and_kernels(graph, threads=torch.get_num_threads())
    # ONNX Runtime runs the graph (uint8 in, normalisation inside it); its predictions are scored as ours are.
    runtime = Predictions(torch.from_numpy(onnx_runtime.logits(runner, test.images)), test.labels)
    latency = onnx_runtime.latency_ms(graph)
    # The FP32 cell's graph is the float model's: timed once, not exported and timed again.
    fp32_latency = (
        latency if method == "none" else onnx_runtime.latency_ms(to_onnx(fold_batchnorm(float_model), normalization))
    )
    return OnnxExport(
        onnx_note=onnx_runtime.UNFUSED_NOTE if onnx_runtime.needs_unfused(graph) else None,
        onnx_file=FILE,
        onnx_opset=graph.opset_import[0].version,
        onnx_bytes=path.stat().st_size,
        onnx_top1=runtime.top1,
        onnx_agreement=runtime.agreement(simulated),
        onnx_logits_max_diff=runtime.max_difference(simulated),
        onnx_kernels=kernels,
        onnx_integer_kernels=onnx_runtime.integer_kernel_count(kernels),
        onnx_ms_batch1=latency[1],
        onnx_ms_batch256=latency[256],
        onnx_fp32_ms_batch1=fp32_latency[1],
        onnx_fp32_ms_batch256=fp32_latency[256],
        onnx_threads=onnx_runtime.LATENCY_THREADS,
        onnx_seconds=round(time.perf_counter() - start, 2),  # writing, running and timing it: not in the cell's
    )
