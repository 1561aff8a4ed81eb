"""Fake-quantized building blocks: a quantizer, wrappers that put quantizers on a layer's inputs, and shared grids.

By default activations are quantized by their consumers: every convolution and linear layer
quantizes its input and its weight (so the pooled features are quantized at the classifier's
input), and a residual ``add`` quantizes both of its operands (the block's conv output and the
shortcut). After ReLU an input is non-negative and its asymmetric grid starts at exactly 0. A
block's output is then quantized by each of its consumers (the next conv and the next shortcut)
with its own observer on the same data -- identical grids except after the option-A shortcut's
subsampling, until learned step sizes pull them apart -- and the last block's output is
average-pooled in float before the classifier's input quantizer.

With shared activations a tensor that several consumers read is quantized once, where it is
made, as an integer pipeline (or an ONNX QDQ graph) requantizes it: its producer becomes a
``QuantOutput`` that owns the one quantizer, and each consumer holds a ``SharedGrid`` in place
of its own quantizer -- a reference, not a submodule, so the quantizer is calibrated, saved,
listed and exported once, at the producer -- and reads its input on that grid unchanged.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qexp.quant.core.affine import fake_quantize_frozen, quant_range
from qexp.quant.core.observers import Observer


class Mode(str, Enum):
    FLOAT = "float"  # pass through
    OBSERVE = "observe"  # record statistics, pass through
    QUANTIZE = "quantize"  # fake-quantize with frozen parameters


class FakeQuantize(nn.Module):
    """Quantize -> clamp -> dequantize with parameters frozen from its observer.

    It computes ``affine.fake_quantize_frozen``: on the integers of ``affine.quantize``, those the
    integer export stores and an ONNX runtime computes, bit for bit.

    Everything it holds goes into ``state_dict`` with a shape fixed at construction -- ``scale``
    and ``zero_point`` are shaped like the observer's range, and the mode travels as extra state --
    so a frozen model's ``state_dict`` loaded into a freshly built one gives the same outputs.
    """

    def __init__(self, observer: Observer) -> None:
        super().__init__()
        self.observer = observer
        self.qmin, self.qmax = quant_range(observer.bits, observer.symmetric, observer.narrow)
        self.mode = Mode.FLOAT
        self.register_buffer("scale", torch.ones_like(observer.min_val))
        self.register_buffer("zero_point", torch.zeros_like(observer.min_val))

    @property
    def bits(self) -> int:
        return self.observer.bits

    def freeze(self) -> None:
        """Compute ``scale`` and ``zero_point`` from what the observer recorded."""
        scale, zero_point = self.observer.calculate_qparams()
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def get_extra_state(self) -> dict[str, str]:
        return {"mode": self.mode.value}

    def set_extra_state(self, state: dict[str, str]) -> None:
        self.mode = Mode(state["mode"])

    def forward(self, x: Tensor) -> Tensor:
        if self.mode is Mode.OBSERVE:
            return self.observer(x)
        if self.mode is Mode.QUANTIZE:
            return fake_quantize_frozen(x, self.scale, self.zero_point, self.qmin, self.qmax, self.observer.axis)
        return x

    def extra_repr(self) -> str:
        return f"mode={self.mode.value}, range=[{self.qmin}, {self.qmax}]"


class SharedGrid:
    """A consumer's side of a quantizer that the producer of its input applies (a ``QuantOutput``).

    The input arrives on that grid already, so reading it is the identity; ``bits`` is the
    quantizer's. Not an ``nn.Module``: the quantizer is a submodule of its producer alone.
    """

    def __init__(self, quantizer: FakeQuantize, producer: str) -> None:
        self.quantizer = quantizer
        self.producer = producer

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def __repr__(self) -> str:
        return f"SharedGrid(quantized by {self.producer})"


def _shared_repr(**operands: FakeQuantize | SharedGrid) -> str:
    """The ``extra_repr`` part that names the operands read on a producer's grid (they are not submodules)."""
    return ", ".join(f"{name}={grid!r}" for name, grid in operands.items() if isinstance(grid, SharedGrid))


class QuantLayer(nn.Module):
    """A conv or linear layer whose weight and input pass through quantizers (the input's may be a ``SharedGrid``)."""

    def __init__(
        self,
        layer: nn.Conv2d | nn.Linear,
        weight_quantizer: FakeQuantize,
        input_quantizer: FakeQuantize | SharedGrid,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.layer.weight)

    def forward(self, x: Tensor) -> Tensor:
        return with_weight(self.layer, self.input_quantizer(x), self.quantized_weight(), self.layer.bias)

    def extra_repr(self) -> str:
        return _shared_repr(input_quantizer=self.input_quantizer)


def with_weight(layer: nn.Conv2d | nn.Linear, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``layer`` applied to ``x`` with ``weight`` and ``bias`` in place of its own (stride, padding, groups kept)."""
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, the ones a ``QuantLayer`` wraps, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def layer_bits(model: nn.Module) -> dict[str, list[int]]:
    """Each ``QuantLayer``'s ``[weight bits, input bits]`` by name; empty for a model without them."""
    return {
        name: [m.weight_quantizer.bits, m.input_quantizer.bits]
        for name, m in model.named_modules()
        if isinstance(m, QuantLayer)
    }


def swap_module(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` where the submodule ``name`` of ``model`` is; return the module that was there.

    Swapping the original back undoes it: quantizers are inserted, and stand-ins tried, this way.
    """
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    original = getattr(parent, attr)
    setattr(parent, attr, replacement)
    return original


class QuantAdd(nn.Module):
    """A residual add whose two operands pass through quantizers (either may be a ``SharedGrid``)."""

    def __init__(self, quantizer_a: FakeQuantize | SharedGrid, quantizer_b: FakeQuantize | SharedGrid) -> None:
        super().__init__()
        self.quantizer_a = quantizer_a
        self.quantizer_b = quantizer_b

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.quantizer_a(a) + self.quantizer_b(b)

    def extra_repr(self) -> str:
        return _shared_repr(quantizer_a=self.quantizer_a, quantizer_b=self.quantizer_b)


class QuantOutput(nn.Module):
    """A module whose output passes through the one quantizer that all the readers of that tensor share."""

    def __init__(self, module: nn.Module, output_quantizer: FakeQuantize) -> None:
        super().__init__()
        self.module = module
        self.output_quantizer = output_quantizer

    def forward(self, *args: Tensor) -> Tensor:
        return self.output_quantizer(self.module(*args))


def shared_grids(model: nn.Module) -> list[SharedGrid]:
    """The ``SharedGrid`` operands of ``model``'s layers and adds, in module order."""
    operands = []
    for module in model.modules():
        if isinstance(module, QuantLayer):
            operands.append(module.input_quantizer)
        elif isinstance(module, QuantAdd):
            operands += [module.quantizer_a, module.quantizer_b]
    return [operand for operand in operands if isinstance(operand, SharedGrid)]


KINDS = ("weight", "activation")


def quantizers(model: nn.Module, kind: str | None = None) -> dict[str, FakeQuantize]:
    """The model's quantizers by name; ``kind="weight"`` or ``"activation"`` selects one sort."""
    if kind not in (None, *KINDS):
        raise ValueError(f"kind={kind!r} is not known; expected None or one of {KINDS}.")
    weight_ids = {id(m.weight_quantizer) for m in model.modules() if isinstance(m, QuantLayer)}
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, FakeQuantize) and kind in (None, "weight" if id(m) in weight_ids else "activation")
    }


def set_mode(model: nn.Module, weights: Mode, activations: Mode) -> None:
    """Switch every weight quantizer to ``weights`` and every activation quantizer to ``activations``."""
    for quantizer in quantizers(model, "weight").values():
        quantizer.mode = weights
    for quantizer in quantizers(model, "activation").values():
        quantizer.mode = activations
