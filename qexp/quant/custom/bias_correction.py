"""Empirical bias correction (Nagel et al. 2019, section 4.2, the empirical variant).

Rounding weights shifts the expected output of a layer: ``E[W_q x] != E[W x]`` channel by
channel, and at 4 and 2 bits the shift is systematic, not noise. The correction measures, on
the calibration images, each output channel's mean in the float model and in the quantized
model, and adds the difference to the layer's bias. Layers are corrected in forward order, each
measured with every layer before it already quantized *and corrected*, so a correction absorbs
the shift it inherits from upstream too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qexp.quant.core.capture import keep_channel_means, record
from qexp.quant.core.modules import QuantLayer


@torch.no_grad()
def correct_bias(quantized: nn.Module, reference: nn.Module, batches: Sequence[Tensor]) -> dict[str, float]:
    """Correct every ``QuantLayer``'s bias in place; return each layer's mean absolute correction.

    ``reference`` is the float model ``quantized`` was made from (BatchNorm folded, same module
    names); it is only read.
    """
    names = [name for name, m in quantized.named_modules() if isinstance(m, QuantLayer)]
    float_means = {name: m.mean(dim=0) for name, m in record(reference, names, batches, keep_channel_means).items()}
    corrections = {}
    for name in names:
        layer = quantized.get_submodule(name).layer
        quantized_mean = record(quantized, [name], batches, keep_channel_means, stop=True)[name].mean(dim=0)
        shift = float_means[name] - quantized_mean
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(shift), requires_grad=False)
        layer.bias.add_(shift)
        corrections[name] = float(shift.abs().mean())
    return corrections
