"""Mixed precision: choose each layer's weight width under a size budget, from calibration data only.

Layers are not equally sensitive (``python -m qexp.sensitivity`` shows it): the stem sees raw
pixels, the classifier feeds the logits directly, and the 64-channel convolutions hold most of
the bytes. A uniform width spends bits where they buy nothing. The assignment here is greedy and
sensitivity-driven (in the spirit of HAWQ's Pareto search, with a measured rather than a
Hessian sensitivity):

1. for every layer and every candidate width, quantize that layer's weights alone and measure
   the mean squared error of the logits against the float model on the calibration images;
2. start with every layer at the widest candidate; while the weights exceed the budget, lower
   the one layer whose next step costs the least added error per byte saved.

Errors of different layers are treated as additive, which is the usual first-order assumption.
The budget is an average number of bits per weight, so it reads the same for any model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from qexp.errors import QexpError
from qexp.quant.core.affine import storage_bits


def weight_bytes(counts: dict[str, int], bits: dict[str, int]) -> float:
    """Bytes of the integer weights when layer ``name`` (``counts[name]`` weights) is stored at ``bits[name]``.

    Widths are counted as the export stores them (``storage_bits``: 3 bits take a byte).
    """
    return sum(counts[name] * storage_bits(bits[name]) / 8 for name in counts)


def check_average_bits(average_bits: float, widths: Sequence[int]) -> None:
    """Refuse a budget below the narrowest candidate width: no assignment of ``widths`` fits it."""
    if not min(widths) <= average_bits:
        raise QexpError(
            f"quant.average_bits={average_bits} is below the narrowest of quant.mixed_widths="
            f"{list(widths)}; expected at least {min(widths)}."
        )


def greedy_assignment(
    counts: dict[str, int], errors: dict[tuple[str, int], float], widths: Sequence[int], average_bits: float
) -> dict[str, int]:
    """The per-layer widths from ``widths`` that fit ``average_bits`` per weight, lowest error first.

    ``errors[(layer, bits)]`` is the error of quantizing ``layer`` alone at ``bits``.
    """
    check_average_bits(average_bits, widths)
    widths = sorted(widths, reverse=True)
    bits = {name: widths[0] for name in counts}
    budget = average_bits * sum(counts.values()) / 8
    while weight_bytes(counts, bits) > budget:
        best, best_cost = None, float("inf")
        for name, current in bits.items():
            lower = [w for w in widths if w < current]
            if not lower:
                continue
            saved = counts[name] * (storage_bits(current) - storage_bits(lower[0])) / 8
            if saved <= 0:
                continue
            cost = (errors[name, lower[0]] - errors[name, current]) / saved
            if cost < best_cost:
                best, best_cost = name, cost
        assert best is not None  # the budget is above the narrowest width, so some layer can go lower
        bits[best] = next(w for w in widths if w < bits[best])
    return bits


@torch.no_grad()
def assign_bits(
    model: nn.Module,
    batches: Sequence[Tensor],
    layers: Sequence[str],
    widths: Sequence[int],
    average_bits: float,
    logits_alone: Callable[[str, int], Tensor],
) -> dict[str, int]:
    """Measure every one of ``layers`` at every width, then pick.

    ``logits_alone(name, bits)`` is the logits on ``batches`` with only that layer's weights
    quantized at ``bits``; the error is their mean squared difference from ``model``'s.
    """
    model.eval()
    reference = torch.cat([model(batch) for batch in batches])
    counts = {name: model.get_submodule(name).weight.numel() for name in layers}
    errors = {}
    for width in widths:
        for name in counts:
            errors[name, width] = float((logits_alone(name, width) - reference).pow(2).mean())
    return greedy_assignment(counts, errors, widths, average_bits)
