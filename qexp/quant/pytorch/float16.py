"""PyTorch's 16-bit row: float16, because ``torch.ao.quantization`` has no int16 convolution.

Its float16 qconfigs exist, but its x86 backend applies them to linear layers only --
convolutions stay fp32 -- so the honest 16-bit counterpart is the whole model in float16: every
weight and buffer a float16 number, the input and every operation's output rounded to float16.

That is simulated in fp32, as PyTorch's own float16 qconfigs simulate it (a cast to float16 and
back at each observed point): the same numbers a ``.half()`` model computes with fp32
accumulation, at the float model's cost. A ``.half()`` model is emulated on CPUs without native
float16 and took 497 s for the test split on a 2-core AVX2 AMD EPYC, against seconds here;
``as_half_model`` keeps the real cast for the test that compares the two. Nothing is observed,
so the cell has no observer.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

FP16_REASON = (
    "float16, not int16: torch.ao.quantization has no int16 convolution and its float16 qconfig "
    "reaches only linear layers on x86, so this is every weight, input and op output rounded to float16"
)


def round_to_float16(x: Tensor) -> Tensor:
    """``x`` rounded to the nearest float16 number (ties to even), kept in ``x``'s dtype."""
    return x.to(torch.float16).to(x.dtype)


def to_float16(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that computes as a float16 model does, in fp32 tensors.

    Parameters and buffers (BatchNorm statistics included) are rounded to float16 once; the input
    and the output of every leaf module are rounded by forward hooks, so each operation reads
    float16 values, accumulates in fp32 and hands float16 values on.
    """
    simulated = copy.deepcopy(model).eval()
    with torch.no_grad():
        for tensor in [*simulated.parameters(), *simulated.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(round_to_float16(tensor))
    for module in simulated.modules():
        if not any(module.children()):
            module.register_forward_hook(lambda _module, _inputs, output: round_to_float16(output))
    return Float16Model(simulated)


def as_half_model(model: nn.Module) -> nn.Module:
    """``model`` cast with ``.half()``, taking and returning float32: the real float16 kernels."""
    return _HalfCast(copy.deepcopy(model).eval().half().to(memory_format=torch.contiguous_format))


def stored_float16(model: nn.Module) -> dict[str, Tensor]:
    """The float16 state dict a float16 deployment stores (2 bytes a value), for the cell's size."""
    return {name: value.half() if value.is_floating_point() else value for name, value in model.state_dict().items()}


class Float16Model(nn.Module):
    """A model whose values are float16 numbers held in fp32 tensors (``to_float16``): the input is rounded too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(round_to_float16(x))


class _HalfCast(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half().contiguous()).float()
