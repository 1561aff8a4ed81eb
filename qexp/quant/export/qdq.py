"""Our fake-quantized model as an ONNX graph in QDQ form: the hand-over format of every deployment toolkit.

The graph is built node by node from an ``fx`` trace of the model, so it carries exactly our
frozen parameters and nothing is re-derived by an exporter or a runtime:

- every activation quantizer becomes a ``QuantizeLinear`` -> ``DequantizeLinear`` pair with its
  scale and zero point; it sits where our quantizer sits (a layer's input, each operand of a
  residual add, or a shared tensor's producer);
- every weight is stored as its integers, per output channel, followed by a ``DequantizeLinear``
  with its scales; a layer whose weight and input are both 8 bits stores its bias as int32 at
  ``s_x * s_w``, the form ONNX Runtime's integer convolution takes (the rounding moves a bias by at
  most half of one accumulator step, which is enough to move a rare activation by one step); any
  other layer adds its float bias after it, where ONNX Runtime cannot quantize it (its own int32
  bias at ``s_x * s_w`` overflows at 16 bits);
- BatchNorm is already folded; the input is the uint8 image, standardised inside the graph as
  ``qexp.data.normalize`` does, so the file is a complete classifier.

With one quantizer per reader (``quant.shared_activations=false``) a tensor read by two layers is
quantized twice, each reader on its own grid, exactly as our fake quantization computes it; the
graph says so in its ``doc_string``. A QDQ runtime fuses a quantizer into its producer only when
it is the tensor's one reader, so shared grids are the layout that runs on integer kernels end to
end. There, a reader whose input passed through a slice or a zero pad since its producer's pair
(the option-A shortcut) gets the same pair again, which changes no value and keeps the add on
integers.

ONNX's integer types are 2 (opset 25), 4 and 16 (opset 21) and 8 bits (opset 13), and a
``QuantizeLinear`` saturates at its type's range, so an activation grid must span its type exactly
-- our unsigned ``[0, 2^b - 1]`` does -- and other widths are ``Unsupported``. The graph declares
the lowest opset that carries its widths.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from qexp.data import CIFAR10_NORMALIZATION, Normalization
from qexp.models.resnet import Add
from qexp.quant.core.affine import quantize
from qexp.quant.core.modules import (
    FakeQuantize,
    Mode,
    QuantAdd,
    QuantLayer,
    SharedGrid,
    quantizers,
    shared_grids,
)
from qexp.quant.core.patterns import Tracer, is_zero_pad
from qexp.quant.unsupported import Unsupported

INPUT, OUTPUT = "image", "logits"
# Bits -> (signed type, unsigned type, the first opset whose QuantizeLinear/DequantizeLinear take them).
INTEGER_TYPES = {
    2: (TensorProto.INT2, TensorProto.UINT2, 25),
    4: (TensorProto.INT4, TensorProto.UINT4, 21),
    8: (TensorProto.INT8, TensorProto.UINT8, 13),
    16: (TensorProto.INT16, TensorProto.UINT16, 21),
}
FLOAT_OPSET = 13
INTEGER_KERNEL_BITS = 8  # ONNX Runtime's integer convolution and matmul: 8-bit weights and input, int32 bias


class _Tracer(Tracer):
    """Also keeps our quantized wrappers whole: each becomes the ONNX nodes it stands for."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        leaves = QuantLayer | QuantAdd | FakeQuantize
        return isinstance(module, leaves) or super().is_leaf_module(module, qualified_name)


@dataclass
class _Graph:
    """The nodes and initializers emitted so far, with fresh names for each."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    opsets: set[int] = field(default_factory=set)  # what the integer types used so far need
    on_grid: dict[str, FakeQuantize] = field(default_factory=dict)  # a DequantizeLinear's output: whose grid
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def constant(self, hint: str, values: np.ndarray | Tensor, data_type: int = TensorProto.FLOAT) -> str:
        """An initializer of ``data_type``, stored as raw bytes (2- and 4-bit values packed) like a runtime reads it."""
        array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
        name = self.name(hint)
        self.initializers.append(
            numpy_helper.from_array(array.astype(helper.tensor_dtype_to_np_dtype(data_type)), name)
        )
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        output = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def integer_type(bits: int, signed: bool, what: str) -> tuple[int, int]:
    """``(ONNX element type, opset)`` of ``bits``-bit integers; ``Unsupported`` when ONNX has no such type."""
    if bits not in INTEGER_TYPES:
        raise Unsupported(
            f"{what} is quantized to {bits} bits; ONNX has integer types of {sorted(INTEGER_TYPES)} bits only."
        )
    signed_type, unsigned_type, opset = INTEGER_TYPES[bits]
    return (signed_type if signed else unsigned_type), opset


def _grid(quantizer: FakeQuantize | SharedGrid) -> FakeQuantize:
    """The quantizer whose grid an operand is on: its own, or the producer's that a ``SharedGrid`` refers to."""
    return quantizer.quantizer if isinstance(quantizer, SharedGrid) else quantizer


def _quantize_dequantize(graph: _Graph, x: str, quantizer: FakeQuantize | SharedGrid, what: str) -> str:
    """``x`` through an activation quantizer: a Q/DQ pair, or nothing when ``x`` is already on a shared grid.

    A shared grid's reader whose input went through a slice or a zero pad since its producer's pair
    (the option-A shortcut) gets the pair again: its values are on that grid already, so it changes
    nothing, and it lets the runtime keep the slice, the pad and the add on integers.
    """
    grid = _grid(quantizer)
    if grid.mode is Mode.FLOAT or (isinstance(quantizer, SharedGrid) and graph.on_grid.get(x) is grid):
        return x
    bits, signed = grid.bits, grid.qmin < 0
    data_type, opset = integer_type(bits, signed, what)
    full = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if (grid.qmin, grid.qmax) != full:  # QuantizeLinear clamps at its type's range, not at our qmax
        raise Unsupported(
            f"{what}'s grid [{grid.qmin}, {grid.qmax}] does not fill the range {list(full)} of its "
            f"{bits}-bit type, at which QuantizeLinear clamps."
        )
    graph.opsets.add(opset)
    scale = graph.constant(f"{what}.scale", grid.scale.float())
    zero_point = graph.constant(f"{what}.zero_point", grid.zero_point.round(), data_type)
    q = graph.node("QuantizeLinear", [x, scale, zero_point], f"{what}.q")
    dequantized = graph.node("DequantizeLinear", [q, scale, zero_point], f"{what}.dq")
    graph.on_grid[dequantized] = grid
    return dequantized


def _int32_bias(bias: Tensor, input_grid: FakeQuantize, wq: FakeQuantize) -> Tensor | None:
    """The bias as int32 at ``s_x * s_w`` for a layer that integer kernels run (8-bit weights and input); else None.

    None as well when a value leaves the int32 range (a channel whose weight scale sits at its
    floor): that layer then keeps its bias float.
    """
    if input_grid.mode is not Mode.QUANTIZE or (wq.bits, input_grid.bits) != (INTEGER_KERNEL_BITS,) * 2:
        return None
    integers = torch.round(bias.double() / (input_grid.scale.double() * wq.scale.double()))
    limit = torch.iinfo(torch.int32)
    return integers if bool(((integers >= limit.min) & (integers <= limit.max)).all()) else None


def _quant_layer(graph: _Graph, x: str, module: QuantLayer, name: str) -> str:
    """A layer on its input's grid, with integer weights (and an int32 bias where integer kernels take one)."""
    layer, wq, input_grid = module.layer, module.weight_quantizer, _grid(module.input_quantizer)
    x = _quantize_dequantize(graph, x, module.input_quantizer, f"{name}.input")
    if wq.mode is Mode.FLOAT:
        return _float_layer(graph, x, layer, name)
    data_type, opset = integer_type(wq.bits, True, f"{name}.weight")
    graph.opsets.add(opset)
    integers = quantize(layer.weight, wq.scale, wq.zero_point, wq.qmin, wq.qmax, wq.observer.axis)
    axis = {} if wq.observer.axis is None else {"axis": wq.observer.axis}
    weight = graph.node(
        "DequantizeLinear",
        [
            graph.constant(f"{name}.weight_q", integers, data_type),
            graph.constant(f"{name}.weight_scale", wq.scale.float()),
            graph.constant(f"{name}.weight_zero_point", wq.zero_point.round(), data_type),
        ],
        f"{name}.weight",
        **axis,
    )
    if layer.bias is None:
        return _layer_node(graph, layer, x, weight, None, name)
    bias_q = _int32_bias(layer.bias, input_grid, wq)
    if bias_q is None:
        # No integer kernel takes this layer: its bias stays float, added after it, where ONNX Runtime's
        # WeightBiasQuantization pass cannot turn it into int32 at s_x * s_w (which overflows at 16 bits).
        out = _layer_node(graph, layer, x, weight, None, f"{name}.unbiased")
        shape = [-1] + [1] * (2 if isinstance(layer, nn.Conv2d) else 0)
        return graph.node("Add", [out, graph.constant(f"{name}.bias", layer.bias.float().reshape(shape))], name)
    bias = graph.node(
        "DequantizeLinear",
        [
            graph.constant(f"{name}.bias_q", bias_q, TensorProto.INT32),
            graph.constant(f"{name}.bias_scale", (input_grid.scale * wq.scale).float().expand(layer.bias.shape)),
            graph.constant(f"{name}.bias_zero_point", np.zeros(layer.bias.shape), TensorProto.INT32),
        ],
        f"{name}.bias",
        axis=0,
    )
    return _layer_node(graph, layer, x, weight, bias, name)


def _float_layer(graph: _Graph, x: str, layer: nn.Conv2d | nn.Linear, name: str) -> str:
    weight = graph.constant(f"{name}.weight", layer.weight.float())
    bias = None if layer.bias is None else graph.constant(f"{name}.bias", layer.bias.float())
    return _layer_node(graph, layer, x, weight, bias, name)


def _layer_node(graph: _Graph, layer: nn.Conv2d | nn.Linear, x: str, weight: str, bias: str | None, name: str) -> str:
    inputs = [x, weight] + ([bias] if bias is not None else [])
    if isinstance(layer, nn.Linear):
        return graph.node("Gemm", inputs, name, transB=1)
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise Unsupported(f"{name}: padding {layer.padding!r} ({layer.padding_mode}) is not exported; zeros only.")
    return graph.node(
        "Conv",
        inputs,
        name,
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride),
        pads=list(layer.padding) * 2,
        dilations=list(layer.dilation),
        group=layer.groups,
    )


def _slice(graph: _Graph, x: str, index: tuple[Any, ...], name: str) -> str:
    """``x[index]`` for an index of plain slices (the option-A shortcut's ``[:, :, ::2, ::2]``)."""
    if not all(isinstance(item, slice) for item in index):
        raise Unsupported(f"{name}: indexing with {index!r} is not exported; slices only.")
    axes = [axis for axis, item in enumerate(index) if item != slice(None)]
    parts = [
        [index[axis].start or 0 for axis in axes],
        [np.iinfo(np.int64).max if index[axis].stop is None else index[axis].stop for axis in axes],
        axes,
        [index[axis].step or 1 for axis in axes],
    ]
    inputs = [
        graph.constant(f"{name}.{part}", np.array(values), TensorProto.INT64)
        for part, values in zip(("starts", "ends", "axes", "steps"), parts, strict=True)
    ]
    return graph.node("Slice", [x, *inputs], name)


def _pad(graph: _Graph, x: str, pad: tuple[int, ...], rank: int, name: str) -> str:
    """``F.pad(x, pad)`` with zeros: torch lists (begin, end) from the last axis back, ONNX all begins then all ends."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    pads = graph.constant(f"{name}.pads", np.array(begins + ends), TensorProto.INT64)
    return graph.node("Pad", [x, pads], name)


def _standardize(graph: _Graph, normalization: Normalization) -> str:
    """The uint8 image as ``qexp.data.normalize`` standardises it: the same float32 constants, the same two ops."""
    mean, std = normalization.pixel_statistics()
    image = graph.node("Cast", [INPUT], "image_float", to=TensorProto.FLOAT)
    centred = graph.node("Sub", [image, graph.constant("mean", mean)], "centred")
    return graph.node("Div", [centred, graph.constant("std", std)], "standardised")


def _emit(graph: _Graph, node: torch.fx.Node, module: nn.Module | None, value: Callable[[Any], Any]) -> str:
    """The ONNX nodes of one traced node; ``value`` maps an fx argument to the ONNX name holding it."""
    name = str(node.target) if node.op == "call_module" else node.name
    args = [value(arg) for arg in node.args]
    if isinstance(module, QuantLayer):
        return _quant_layer(graph, args[0], module, name)
    if isinstance(module, nn.Conv2d | nn.Linear):
        return _float_layer(graph, args[0], module, name)
    if isinstance(module, FakeQuantize):
        return _quantize_dequantize(graph, args[0], module, name)
    if isinstance(module, QuantAdd):
        a = _quantize_dequantize(graph, args[0], module.quantizer_a, f"{name}.a")
        b = _quantize_dequantize(graph, args[1], module.quantizer_b, f"{name}.b")
        return graph.node("Add", [a, b], name)
    if isinstance(module, Add) or node.target is operator.add:
        return graph.node("Add", args[:2], name)
    if isinstance(module, nn.ReLU) or node.target in (F.relu, torch.relu):
        return graph.node("Relu", args[:1], name)
    if isinstance(module, nn.Identity):
        return args[0]
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return graph.node("GlobalAveragePool", args[:1], name)
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return graph.node("Flatten", args[:1], name, axis=1)
    if node.target is operator.getitem:
        return _slice(graph, args[0], node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],), name)
    if is_zero_pad(node):
        pad = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None)
        return _pad(graph, args[0], tuple(pad), len(node.args[0].meta["tensor_meta"].shape), name)
    what = type(module).__name__ if module is not None else getattr(node.target, "__name__", str(node.target))
    raise Unsupported(f"{name} ({what}) has no ONNX export; qexp exports ResNet's operations only.")


def describe(model: nn.Module) -> str:
    """The graph's ``doc_string``: its input, and where its quantizers sit (a per-reader grid is kept as such)."""
    activations = quantizers(model, "activation")
    io = "input uint8 RGB N x 3 x 32 x 32, standardised in the graph; output logits"
    if not activations:
        return f"qexp: float model, BatchNorm folded; {io}."
    if shared_grids(model):
        layout = "one per tensor, at its producer, repeated unchanged after a slice or pad"
    else:
        layout = "one per reader of each tensor"
    return (
        f"qexp: {len(activations)} activation quantizers ({layout}; each Q/DQ pair carries one of ours, none merged), "
        f"integer weights with their scales; {io}."
    )


def to_onnx(model: nn.Module, normalization: Normalization = CIFAR10_NORMALIZATION) -> onnx.ModelProto:
    """The ONNX graph of ``model`` (a frozen ``quantize_model`` result, or a float ResNet with BatchNorm folded).

    Input ``image``: uint8 ``N x 3 x 32 x 32`` RGB, standardised inside the graph with the model's
    ``normalization``; output ``logits``: ``N x classes``. Raises
    ``Unsupported`` for a model that is not frozen, or a width or an operation ONNX (or this
    exporter) cannot carry.
    """
    observing = [name for name, q in quantizers(model).items() if q.mode is Mode.OBSERVE]
    if observing:
        raise Unsupported(f"quantizers {observing} are still observing; only a frozen model exports.")
    model = model.eval()
    traced = _Tracer().trace(model)
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    with torch.no_grad():  # every node's output shape: a pad needs its input's rank
        ShapeProp(torch.fx.GraphModule(model, traced)).propagate(torch.zeros(1, 3, 32, 32, device=device))
    graph = _Graph()
    names: dict[torch.fx.Node, str] = {}

    def value(arg: Any) -> Any:
        return names[arg] if isinstance(arg, torch.fx.Node) else arg

    output = None
    for node in traced.nodes:
        if node.op == "placeholder":
            names[node] = _standardize(graph, normalization)
        elif node.op == "output":
            output = value(node.args[0])
        else:
            module = modules[node.target] if node.op == "call_module" else None
            names[node] = _emit(graph, node, module, value)
    graph.nodes.append(helper.make_node("Identity", [output], [OUTPUT], name=OUTPUT))
    proto = helper.make_graph(
        graph.nodes,
        "qexp",
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", None])],
        graph.initializers,
        doc_string=describe(model),
    )
    opsets = [helper.make_opsetid("", max([FLOAT_OPSET, *graph.opsets]))]
    exported = helper.make_model(
        proto, opset_imports=opsets, producer_name="qexp", ir_version=helper.find_min_ir_version_for(opsets)
    )
    onnx.checker.check_model(exported, full_check=True)
    return exported


def operator_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each operator ``model`` has."""
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))
