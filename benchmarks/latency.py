"""CPU inference latency and stored size: FP32 eager vs PyTorch FX int8 vs float16, in one run.

    python benchmarks/latency.py --threads 2 [--checkpoint PATH]

Fixed thread count, warm-up, median of repeats, at batch 1 and batch 256; eager against eager
(nothing compiled). Calibrates FX int8 on random inputs unless a data root is given: latency
does not depend on the calibration, accuracy is measured by ``qexp.quantize``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from qexp.models import resnet20
from qexp.provenance import hardware
from qexp.quant.export import serialized_bytes
from qexp.quant.torch_ptq import quantize_int8, to_float16
from qexp.weights import SHIPPED, load_weights


@torch.no_grad()
def median_seconds(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    models = {"fp32 eager": model, "FX int8 (x86)": int8, "float16": to_float16(model)}
    print(f"{hardware()}; torch {torch.__version__}; {args.threads} threads")
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"quantized engine {torch.backends.quantized.engine}; CPU capability {capability}")
    base = {}
    for batch in (1, 256):
        x = torch.randn(batch, 3, 32, 32)
        repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
        for name, m in models.items():
            seconds = median_seconds(m, x, repeats)
            base.setdefault(batch, seconds)
            print(f"batch {batch:3d} {name:14s} {seconds * 1000:9.2f} ms  x{base[batch] / seconds:5.2f} vs fp32")
    for name, m in models.items():
        print(f"size {name:14s} {serialized_bytes(m):10,d} bytes")


if __name__ == "__main__":
    main()
