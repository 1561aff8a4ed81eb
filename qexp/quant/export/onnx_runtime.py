"""An exported graph on ONNX Runtime's CPU provider: its logits, its latency, and which kernels it really runs.

A QDQ graph says what to compute, the runtime decides how: ONNX Runtime fuses
``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` (and adds, matmuls likewise)
only where it has an integer kernel for those types, and otherwise dequantizes and runs the float
kernel. So a cell records the operators of the graph ONNX Runtime actually runs (``kernels``), not
only its accuracy: a 4-bit graph that agrees with our simulation but runs float convolutions is a
file format, not an integer deployment.

Latency follows ``benchmarks/latency.py`` (``timing.py``): a session with a fixed thread count,
warm-up, the median of repeats, batch 1 and batch 256.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from torch import Tensor

from qexp.quant.export.qdq import INPUT, operator_counts
from qexp.quant.export.timing import median_seconds, repeats_for

# ONNX Runtime 1.32 fuses 2-bit Q/DQ pairs into QLinearConv, which then rejects its uint2 input
# (INVALID_GRAPH at load); with its QDQ fusion off the same graph runs, dequantized before every layer.
UNFUSED_NOTE = (
    "run with ONNX Runtime's QDQ fusion off (session.disable_quant_qdq=1): with it on, ONNX Runtime fuses the "
    "2-bit Q/DQ pairs into QLinearConv, which rejects their uint2 input"
)
# Operators of an optimized graph that compute on integers.
INTEGER_KERNELS = ("QLinearConv", "QLinearAdd", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger")
LATENCY_THREADS = 1
VERSION = onnxruntime.__version__


def session(model: onnx.ModelProto, threads: int, optimized_to: Path | None = None) -> onnxruntime.InferenceSession:
    """A CPU session of ``model`` with ``threads`` intra-op threads, run sequentially.

    ``optimized_to``: where to write the graph ONNX Runtime made of ``model`` once it fused it.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: a sweep's log is not the place for optimizer notes
    if optimized_to is not None:
        options.optimized_model_filepath = str(optimized_to)
    if needs_unfused(model):
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def session_and_kernels(model: onnx.ModelProto, threads: int) -> tuple[onnxruntime.InferenceSession, dict[str, int]]:
    """A ``session`` and the operators of the graph it runs (after ONNX Runtime's fusions), by count."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "optimized.onnx"
        runner = session(model, threads, optimized_to=path)
        return runner, operator_counts(onnx.load(path))


def needs_unfused(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds 2-bit integers, which ONNX Runtime runs only with its QDQ fusion off."""
    two_bit = {onnx.TensorProto.INT2, onnx.TensorProto.UINT2}
    return any(tensor.data_type in two_bit for tensor in model.graph.initializer)


def logits(runner: onnxruntime.InferenceSession, images: Tensor, batch_size: int = 1000) -> np.ndarray:
    """The logits of uint8 ``images`` (``N x 3 x 32 x 32``), in batches."""
    return np.concatenate(
        [runner.run(None, {INPUT: images[i : i + batch_size].numpy()})[0] for i in range(0, len(images), batch_size)]
    )


def latency_ms(
    model: onnx.ModelProto, batch_sizes: tuple[int, ...] = (1, 256), repeats: int = 20, threads: int = LATENCY_THREADS
) -> dict[int, float]:
    """Median milliseconds per run of ``model`` at each batch size (``timing.py``), on random uint8 images."""
    runner = session(model, threads)
    rng = np.random.default_rng(0)
    measured = {}
    for size in batch_sizes:
        feed = {INPUT: rng.integers(0, 256, (size, 3, 32, 32), dtype=np.uint8)}
        measured[size] = 1000 * median_seconds(lambda feed=feed: runner.run(None, feed), repeats_for(size, repeats))
    return measured


def integer_kernel_count(counts: dict[str, int]) -> int:
    """How many of an optimized graph's operators (``session_and_kernels``) compute on integers."""
    return sum(count for op, count in counts.items() if op in INTEGER_KERNELS)
