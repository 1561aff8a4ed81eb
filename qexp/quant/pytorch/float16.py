"""PyTorch's 16-bit row: the model cast to float16, because ``torch.ao.quantization`` has no int16 conv.

Its float16 qconfigs exist, but its x86 backend applies them to linear layers only --
convolutions stay fp32 -- so the honest 16-bit counterpart is the model cast with ``.half()``
and run in float16 on the CPU. Nothing is observed, so the cell has no observer.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

FP16_REASON = (
    "float16, not int16: torch.ao.quantization has no int16 convolution and its float16 qconfig "
    "reaches only linear layers on x86, so this is the model cast with .half() and run in float16"
)


def to_float16(model: nn.Module) -> nn.Module:
    """A float16 copy of ``model`` that takes and returns float32 tensors."""
    return _Float16(copy.deepcopy(model).eval().half().to(memory_format=torch.contiguous_format))


class _Float16(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half().contiguous()).float()
