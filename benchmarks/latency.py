"""CPU inference latency and stored size of ResNet20: PyTorch fp32 eager and compiled, FX int8, pt2e int8, float16,
and ONNX Runtime fp32 and our int8 (W8A8 exported as QDQ, per-reader and shared grids).

    python benchmarks/latency.py --threads 2 [--checkpoint PATH]

One run, one thread count, warm-up, median of repeats, at batch 1 and batch 256. Compiled
models (``torch.compile`` with Inductor freezing, static shapes) compile once per batch size
on their first call; that time is reported on its own line, as is pt2e's export + calibration
+ convert time, and kept out of the latency. Calibration uses random inputs: latency does not
depend on it (accuracy is measured by ``qexp.quantize``). ONNX Runtime sessions run with the same
thread count, sequentially; they read uint8 images (the graph standardises them), the PyTorch
models float ones, so each row times the whole classifier it is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from qexp.cells.provenance import hardware
from qexp.cells.weights import SHIPPED, load_weights
from qexp.models import resnet20
from qexp.quant import PTQConfig, quantize_model, serialized_bytes
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.export import onnx_runtime
from qexp.quant.export.qdq import INPUT, to_onnx
from qexp.quant.export.timing import median_seconds, repeats_for
from qexp.quant.pytorch.float16 import to_float16
from qexp.quant.pytorch.fx import quantize_int8
from qexp.quant.pytorch.pt2e import Graph, quantize_pt2e, used_state

COMPILED = ("fp32 compiled", "pt2e int8 lowered")


def seconds(function) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=str(SHIPPED))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet20()
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_file():  # latency does not depend on the weights, but use the real ones when present
        load_weights(checkpoint, model, "resnet20")
    model.eval()
    calibration = [torch.randn(256, 3, 32, 32) for _ in range(2)]
    int8, _ = quantize_int8(model, calibration, "minmax", "per_channel")
    (converted, _), prepare_seconds = seconds(lambda: quantize_pt2e(model, calibration, "mse"))
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  registers the int8 fusion passes

    one_batch = [calibration[0]]
    graphs = {
        "ORT fp32": to_onnx(fold_batchnorm(model)),
        **{
            f"ORT int8 ours ({grids})": to_onnx(
                quantize_model(model, PTQConfig(8, 8, shared_activations=shared), one_batch)[0]
            )
            for grids, shared in (("per reader", False), ("shared", True))
        },
    }
    sessions = {name: onnx_runtime.session(graph, args.threads) for name, graph in graphs.items()}
    models = {
        "fp32 eager": model,
        "fp32 compiled": Graph(torch.compile(model, dynamic=False), freezing=True),
        "FX int8 (x86)": int8,
        "pt2e int8 lowered": Graph(torch.compile(converted, dynamic=False), freezing=True),
        "float16": to_float16(model),
    }
    sizes = {name: serialized_bytes(m) for name, m in models.items() if name not in COMPILED}
    sizes["pt2e int8 lowered"] = serialized_bytes(used_state(converted))
    sizes.update({name: graph.ByteSize() for name, graph in graphs.items()})
    print(f"{hardware()}; torch {torch.__version__}; onnxruntime {onnx_runtime.VERSION}; {args.threads} threads")
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"quantized engine {torch.backends.quantized.engine}; CPU capability {capability}")
    print(f"pt2e export + calibrate + convert: {prepare_seconds:.1f} s")
    base = {}
    for batch in (1, 256):
        x = torch.randn(batch, 3, 32, 32)
        images = np.random.default_rng(0).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)  # ORT reads uint8
        for name in COMPILED:
            _, compile_seconds = seconds(lambda name=name, x=x: models[name](x))
            print(f"compile {name} at batch {batch}: {compile_seconds:.1f} s")
        calls = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
        calls.update({name: (lambda r=r, i=images: r.run(None, {INPUT: i})) for name, r in sessions.items()})
        for name, call in calls.items():
            with torch.no_grad():
                latency = median_seconds(call, repeats_for(batch, args.repeats))
            base.setdefault(batch, latency)
            print(f"batch {batch:3d} {name:28s} {latency * 1000:9.2f} ms  x{base[batch] / latency:5.2f} vs fp32 eager")
    for name, size in sizes.items():
        print(f"size {name:28s} {size:10,d} bytes")


if __name__ == "__main__":
    main()
