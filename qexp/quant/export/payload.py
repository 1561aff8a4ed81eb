"""Payload bytes: the numbers a kernel needs, each counted at its own precision, whatever the file format.

Serialised bytes (``packed.serialized_bytes``) are what a file takes, but they mix the model with
the format: ``torch.save`` spends a few hundred bytes on each tensor record, and PyTorch's FX
int8 modules keep their per-channel scales as float64 and zero points as int64. Comparing those
files says as much about pickle as about quantization. The payload counts, for every method
alike:

- integer weights at their bit width (2, 4, 8 or 16 bits each);
- each scale as a float32 (4 bytes; float32 is what the kernels compute with);
- each zero point at the width of its grid (an 8-bit grid's zero point is one byte);
- biases and every float tensor at their element size (float32: 4 bytes, float16: 2).

Shapes, offsets and bit widths (a few bytes per layer) are structure, the same for any format,
and are left out. The total is rounded up to whole bytes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.ao.nn.quantized.modules.utils import WeightedQuantizedModule

from qexp.quant.core.modules import QuantLayer
from qexp.quant.export.packed import integer_export
from qexp.quant.pytorch.float16 import Float16Model, stored_float16
from qexp.quant.pytorch.pt2e import Graph, used_state

SCALE_BITS = 32
INT8_ZERO_POINT_BITS = 8
# pt2e's activation quantization points carry their scale and zero point as literals of these calls.
PT2E_ACTIVATION_QUANTIZE = "quantized_decomposed.quantize_per_tensor.default"


def payload_bytes(model: nn.Module) -> int:
    """The payload of ``model`` as ``qexp.quant.quantize`` returns it: ours, PyTorch FX or pt2e int8, or float.

    Ours is counted from its integer export; FX int8 from its quantized modules' int8 weights,
    per-channel scales and zero points, biases and the activation scales and zero points of the
    graph; pt2e from the tensors its converted graph reads plus one scale and zero point per
    activation quantization; any other model (fp32, float16) from its floating-point state.
    """
    if any(isinstance(module, QuantLayer) for module in model.modules()):
        return _bytes(ours_payload_bits(model))
    if isinstance(model, Graph):
        graph = getattr(model.graph, "_orig_mod", model.graph)  # the converted graph behind torch.compile
        return _bytes(pt2e_payload_bits(graph))
    if any(isinstance(module, WeightedQuantizedModule) for module in model.modules()):
        return _bytes(fx_payload_bits(model))
    state = stored_float16(model) if isinstance(model, Float16Model) else model.state_dict()
    return _bytes(sum(8 * t.numel() * t.element_size() for t in state.values() if t.is_floating_point()))


def ours_payload_bits(model: nn.Module) -> int:
    """Bits of our integer export: packed weights, float32 scales and biases, activation scales and zero points."""
    state = integer_export(model)
    shapes, widths = state["weight_shapes"].tolist(), state["weight_bits"].tolist()
    weights = sum(math.prod(shape) * bits for shape, bits in zip(shapes, widths, strict=True))
    activations = len(state["activation_scales"]) * SCALE_BITS + int(state["activation_bits"].sum())
    return weights + SCALE_BITS * (state["weight_scales"].numel() + state["biases"].numel()) + activations


def fx_payload_bits(model: nn.Module) -> int:
    """Bits of an FX-converted int8 model: its quantized modules, then the graph's own activation qparams."""
    bits = 0
    for module in model.modules():
        if not isinstance(module, WeightedQuantizedModule):
            continue
        weight = module.weight()
        bits += weight.numel() * 8
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            bits += weight.q_per_channel_scales().numel() * (SCALE_BITS + INT8_ZERO_POINT_BITS)
        else:
            bits += SCALE_BITS + INT8_ZERO_POINT_BITS
        bias = module.bias()
        bits += 0 if bias is None else 32 * bias.numel()
        bits += SCALE_BITS + INT8_ZERO_POINT_BITS  # the module's output scale and zero point
    for node in model.graph.nodes:  # inputs quantized by quantize_per_tensor, outputs of quantized adds
        if node.op == "get_attr" and "zero_point" in node.target:
            bits += INT8_ZERO_POINT_BITS
        elif node.op == "get_attr" and "scale" in node.target:
            bits += SCALE_BITS
    return bits


def pt2e_payload_bits(converted: torch.fx.GraphModule) -> int:
    """Bits of a pt2e-converted int8 graph: int8 weights, per-channel qparams, biases, activation qparams."""
    bits = 0
    for name, tensor in used_state(converted).items():
        if "zero_point" in name:
            bits += tensor.numel() * INT8_ZERO_POINT_BITS
        elif "scale" in name:
            bits += tensor.numel() * SCALE_BITS
        else:  # int8 weights, float32 biases
            bits += tensor.numel() * tensor.element_size() * 8
    activations = sum(1 for node in converted.graph.nodes if str(node.target) == PT2E_ACTIVATION_QUANTIZE)
    return bits + activations * (SCALE_BITS + INT8_ZERO_POINT_BITS)


def _bytes(bits: int) -> int:
    return (bits + 7) // 8
