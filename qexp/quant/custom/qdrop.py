"""QDrop (Wei et al. 2022): while a unit is fitted, each activation value skips quantization with probability ``drop``.

Fitting the rounding with every activation quantized fits it to one quantization noise; letting
a random part of the values through in float (and, in ``reconstruct.py``, taking that part of a
unit's input from the float model) fits it to a flatter loss surface, which holds up better on
images it was not fitted to. The drop is only a way of fitting: in eval mode the quantizer
inside acts alone, and what is written back is that quantizer's. The masks are drawn from a
generator of their own (``qdrop_mask``), so a run repeats with its seed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def qdrop_mask(like: Tensor, drop: float, generator: torch.Generator) -> Tensor:
    """True where a value of ``like`` is kept float, with probability ``drop``; shaped like it, on its device.

    ``generator`` must live on ``like``'s device: masks then depend on its seed alone, on CPU
    and GPU alike, and the caller's random state is left as it was.
    """
    return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype) < drop


class QDrop(nn.Module):
    """A quantizer that, in train mode, passes each value through unquantized with probability ``drop``."""

    def __init__(self, quantizer: nn.Module, drop: float, generator: torch.Generator) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.drop = drop
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        quantized = self.quantizer(x)
        if self.training and self.drop > 0:
            return torch.where(qdrop_mask(x, self.drop, self.generator), x, quantized)
        return quantized

    def extra_repr(self) -> str:
        return f"drop={self.drop}"
