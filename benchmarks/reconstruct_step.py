"""Steps per second of block reconstruction, per unit, against the floor of a bare float step.

    python benchmarks/reconstruct_step.py --steps 200

Runs the production path, ``qexp.quant.custom.reconstruct.reconstruct``, on ResNet20 at W4A4 (mse,
BRECQ+LSQ+QDrop, batch 32) with random calibration images, and reads the time of every step from
its progress bar: a clock stands in for tqdm, so nothing of the fitting loop is copied here. The
floor is a bare forward + backward of the same float unit (BatchNorm folded, gradients to its
weights) at the same batch: what a step costs without quantizers, rounding logits or QDrop. Prints,
for the stem, a block and the classifier unit, both rates and their ratio (reconstruction's time per
step over the floor's), and the mean rate over all units.

``--bf16`` runs the fitting loop and the floor under bf16 autocast (the convolutions in bf16, the
quantizers in fp32 as they always compute): the speed a bf16 reconstruction would have, measured
before making it one (it changes the maths; production reconstruction runs in fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import time
from unittest import mock

import torch
from torch import Tensor, nn

from qexp.models import resnet20
from qexp.quant.core.capture import keep_input, keep_output, record
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.custom import reconstruct as reconstruction
from qexp.quant.custom.ptq import PTQConfig, calibrate, freeze, insert_quantizers
from qexp.quant.custom.reconstruct import ReconstructionConfig, output_error, units

SHOWN = {"conv1": "stem", "layer2.0": "block", "fc": "classifier"}


class StepClock:
    """A stand-in for ``tqdm`` that records when each step ended; ``last`` is the newest one made."""

    last: StepClock

    def __init__(self, *args, **kwargs) -> None:
        self.times = [time.perf_counter()]
        StepClock.last = self

    def __enter__(self) -> StepClock:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.times.append(time.perf_counter())


def reconstruction_rates(reference: nn.Module, batches: list[Tensor], steps: int, skip: int) -> dict[str, float]:
    """Steps per second of each unit's fitting loop on the folded ``reference``: the median step, the first
    ``skip`` of each unit left out."""
    quantized = insert_quantizers(copy.deepcopy(reference), PTQConfig(4, 4, observer="mse"))
    calibrate(quantized, batches)
    freeze(quantized)
    config = ReconstructionConfig(steps=steps)
    names = units(quantized, reference, config.unit)
    with mock.patch.object(reconstruction, "tqdm", StepClock):
        reconstruction.reconstruct(quantized, reference, batches, config)
    ends = torch.tensor(StepClock.last.times[1:], dtype=torch.float64)
    rates = {}
    for index, name in enumerate(names):
        unit = ends[index * steps : (index + 1) * steps]
        rates[name] = 1 / float(unit.diff()[skip:].median())
    return rates


def floor_rate(reference: nn.Module, batches: list[Tensor], name: str, steps: int, batch_size: int) -> float:
    """Steps per second of a bare forward + backward of the folded float unit ``name`` (gradients to its weights)."""
    inputs = record(reference, [name], batches, keep_input, stop=True)[name][:batch_size]
    targets = record(reference, [name], batches, keep_output, stop=True)[name][:batch_size]
    unit = reference.get_submodule(name).train()
    unit.requires_grad_(True)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = output_error(unit(inputs), targets)
        unit.zero_grad(set_to_none=True)
        loss.backward()
        times.append(time.perf_counter() - start)
    return 1 / float(torch.tensor(times).median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="reconstruction steps per unit")
    parser.add_argument("--skip", type=int, default=20, help="first steps of each unit not timed")
    parser.add_argument("--images", type=int, default=1024, help="calibration images")
    parser.add_argument("--bf16", action="store_true", help="fitting loop and floor under bf16 autocast")
    args = parser.parse_args()
    torch.manual_seed(0)
    reference = fold_batchnorm(resnet20().eval())
    batches = list(torch.randn(args.images, 3, 32, 32).split(256))
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    batch_size = ReconstructionConfig().batch_size
    with precision:
        rates = reconstruction_rates(reference, batches, args.steps, args.skip)
        floors = {name: floor_rate(reference, batches, name, args.steps, batch_size) for name in SHOWN}  # it trains
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"W4A4 mse, BRECQ+LSQ+QDrop, batch {batch_size}, {args.steps} steps a unit ({args.skip} untimed), "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}"
    )
    print(f"{'unit':<22}{'steps/s':>10}{'floor steps/s':>15}{'ratio':>8}")
    for name, label in SHOWN.items():
        floor = floors[name]
        print(f"{label + ' (' + name + ')':<22}{rates[name]:>10.1f}{floor:>15.1f}{floor / rates[name]:>8.2f}")
    mean = len(rates) / sum(1 / rate for rate in rates.values())
    print(f"{'all ' + str(len(rates)) + ' units':<22}{mean:>10.1f}{'':>15}{'':>8}")


if __name__ == "__main__":
    main()
