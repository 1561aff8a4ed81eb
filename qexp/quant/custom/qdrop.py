"""QDrop (Wei et al. 2022): while a unit is fitted, each activation value skips quantization with probability ``drop``.

Fitting the rounding with every activation quantized fits it to one quantization noise; letting
a random part of the values through in float (and, in ``reconstruct.py``, taking that part of a
unit's input from the float model) fits it to a flatter loss surface, which holds up better on
images it was not fitted to. The drop is only a way of fitting: in eval mode the quantizer
inside acts alone, and what is written back is that quantizer's. The masks are drawn from a
generator of their own (``qdrop_mask``), so a run repeats with its seed.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from qexp.quant.core.lsq import LearnedStepQuantizer

# The seven bytes of a non-negative int64 that are uniformly random: all but the most significant one.
_RANDOM_BYTES = slice(0, 7) if sys.byteorder == "little" else slice(1, 8)


def qdrop_mask(like: Tensor, drop: float, generator: torch.Generator) -> Tensor:
    """1 where a value of ``like`` is kept float, with probability ``drop``, else 0; float32, shaped like ``like``.

    A float mask, not a boolean one, for ``lsq.masked_choice`` and the fused quantizer (see there
    why). ``generator`` must live on ``like``'s device: masks then depend on its seed alone, on CPU
    and GPU alike, and the caller's random state is left as it was. Where ``drop`` is a multiple
    of 1/256 (QDrop's 0.5 is), each value compares one random byte with ``256 * drop``, seven
    bytes from each 63-bit integer the generator draws: exactly the same probability as a uniform
    draw, from a quarter of the generator's work (0.37 against 0.96 ms for 262 144 values on the
    2-core Xeon; ``torch.rand`` took 16 % of a block's reconstruction step).
    """
    if not 0 <= drop < 1:
        raise ValueError(f"drop={drop!r}; expected a probability in [0, 1).")
    threshold = drop * 256
    if threshold != int(threshold):
        return (torch.rand(like.shape, generator=generator, device=like.device) < drop).float()
    words = torch.empty(-(-like.numel() // 7), dtype=torch.int64, device=like.device).random_(generator=generator)
    random_bytes = words.view(torch.uint8).view(-1, 8)[:, _RANDOM_BYTES].flatten()[: like.numel()]
    return (random_bytes < int(threshold)).float().view(like.shape)


class QDrop(nn.Module):
    """A quantizer that, in train mode, passes each value through unquantized with probability ``drop``.

    The mask goes into the learned-step quantizer, which selects and differentiates in one pass.
    """

    def __init__(self, quantizer: LearnedStepQuantizer, drop: float, generator: torch.Generator) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.drop = drop
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.drop > 0:
            return self.quantizer(x, keep=qdrop_mask(x, self.drop, self.generator))
        return self.quantizer(x)

    def extra_repr(self) -> str:
        return f"drop={self.drop}"
