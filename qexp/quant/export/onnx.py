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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import Tensor, nn

from qexp.data import MEAN, STD
from qexp.models.resnet import Add
from qexp.quant.core.affine import quantize
from qexp.quant.core.modules import FakeQuantize, Mode, QuantAdd, QuantLayer, SharedGrid, quantizers, shared_grids
from qexp.quant.core.patterns import is_zero_pad
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


class _Tracer(torch.fx.Tracer):
    """Keeps our quantized wrappers and the residual ``Add`` whole: each becomes the nodes it stands for."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        leaves = QuantLayer | QuantAdd | FakeQuantize | Add
        return isinstance(module, leaves) or super().is_leaf_module(module, qualified_name)


@dataclass
class _Graph:
    """The nodes and initializers emitted so far, with fresh names for each."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    widths: set[int] = field(default_factory=set)
    on_grid: dict[str, FakeQuantize] = field(default_factory=dict)  # a DequantizeLinear's output: whose grid
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def constant(self, hint: str, values: np.ndarray | Tensor, data_type: int = TensorProto.FLOAT) -> str:
        values = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values)
        name = self.name(hint)
        flat = values.flatten().tolist()
        self.initializers.append(helper.make_tensor(name, data_type, values.shape, flat))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        output = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def integer_type(quantizer: FakeQuantize, what: str) -> tuple[int, int]:
    """``(ONNX element type, opset)`` that holds ``quantizer``'s integers; ``Unsupported`` when none does.

    An activation grid must fill its type's range, because ``QuantizeLinear`` clamps there and not
    at our ``qmax``; a weight is stored as integers, so it only has to fit.
    """
    bits, signed = quantizer.bits, quantizer.qmin < 0
    if bits not in INTEGER_TYPES:
        raise Unsupported(
            f"{what} is quantized to {bits} bits; ONNX has integer types of {sorted(INTEGER_TYPES)} bits only."
        )
    signed_type, unsigned_type, opset = INTEGER_TYPES[bits]
    full = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    is_activation = quantizer.observer.axis is None and not quantizer.observer.symmetric
    if is_activation and (quantizer.qmin, quantizer.qmax) != full:
        raise Unsupported(
            f"{what}'s grid [{quantizer.qmin}, {quantizer.qmax}] does not fill the range {list(full)} of its "
            f"{bits}-bit type, at which QuantizeLinear clamps."
        )
    return (signed_type if signed else unsigned_type), opset


def _quantize_dequantize(graph: _Graph, x: str, quantizer: FakeQuantize | SharedGrid, what: str) -> str:
    """``x`` through an activation quantizer: a Q/DQ pair, or nothing when ``x`` is already on a shared grid.

    A shared grid's reader whose input went through a slice or a zero pad since its producer's pair
    (the option-A shortcut) gets the pair again: its values are on that grid already, so it changes
    nothing, and it lets the runtime keep the slice, the pad and the add on integers.
    """
    if isinstance(quantizer, SharedGrid):
        if graph.on_grid.get(x) is quantizer.quantizer:
            return x
        quantizer = quantizer.quantizer
    if quantizer.mode is Mode.FLOAT:
        return x
    if quantizer.mode is not Mode.QUANTIZE:
        raise Unsupported(f"{what} is in mode {quantizer.mode.value!r}; only a frozen model exports.")
    data_type, opset = integer_type(quantizer, what)
    graph.widths.add(opset)
    scale = graph.constant(f"{what}.scale", quantizer.scale.float())
    zero_point = graph.constant(f"{what}.zero_point", quantizer.zero_point.round().int(), data_type)
    q = graph.node("QuantizeLinear", [x, scale, zero_point], f"{what}.q")
    dequantized = graph.node("DequantizeLinear", [q, scale, zero_point], f"{what}.dq")
    graph.on_grid[dequantized] = quantizer
    return dequantized


def _input_scale(quantizer: FakeQuantize | SharedGrid) -> Tensor | None:
    """The scale of a layer's input grid, or None when its input is float."""
    if isinstance(quantizer, SharedGrid):
        quantizer = quantizer.quantizer
    return quantizer.scale if quantizer.mode is Mode.QUANTIZE else None


def _quant_layer(graph: _Graph, x: str, module: QuantLayer, name: str) -> str:
    """A layer on its input's grid, with integer weights (and an int32 bias where integer kernels take one)."""
    layer, wq = module.layer, module.weight_quantizer
    x = _quantize_dequantize(graph, x, module.input_quantizer, f"{name}.input")
    if wq.mode is not Mode.QUANTIZE:
        return _float_layer(graph, x, layer, name)
    data_type, opset = integer_type(wq, f"{name}.weight")
    graph.widths.add(opset)
    integers = quantize(layer.weight, wq.scale, wq.zero_point, wq.qmin, wq.qmax, wq.observer.axis)
    axis = {} if wq.observer.axis is None else {"axis": wq.observer.axis}
    weight = graph.node(
        "DequantizeLinear",
        [
            graph.constant(f"{name}.weight_q", integers.int(), data_type),
            graph.constant(f"{name}.weight_scale", wq.scale.float()),
            graph.constant(f"{name}.weight_zero_point", wq.zero_point.round().int(), data_type),
        ],
        f"{name}.weight",
        **axis,
    )
    bias, input_scale = layer.bias, _input_scale(module.input_quantizer)
    if bias is None:
        return _layer_node(graph, layer, x, weight, None, name)
    if input_scale is None or (wq.bits, module.input_quantizer.bits) != (INTEGER_KERNEL_BITS, INTEGER_KERNEL_BITS):
        # No integer kernel takes this layer: its bias stays float, added after it, where ONNX Runtime's
        # WeightBiasQuantization pass cannot turn it into int32 at s_x * s_w (which overflows at 16 bits).
        out = _layer_node(graph, layer, x, weight, None, f"{name}.unbiased")
        shape = [-1] + [1] * (2 if isinstance(layer, nn.Conv2d) else 0)
        return graph.node("Add", [out, graph.constant(f"{name}.bias", bias.float().reshape(shape))], name)
    bias_scale = (input_scale * wq.scale).float().expand(bias.shape)  # per channel, or one scale broadcast
    bias = graph.node(
        "DequantizeLinear",
        [
            graph.constant(f"{name}.bias_q", torch.round(bias / bias_scale).int(), TensorProto.INT32),
            graph.constant(f"{name}.bias_scale", bias_scale),
            graph.constant(f"{name}.bias_zero_point", torch.zeros(bias.shape, dtype=torch.int32), TensorProto.INT32),
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
    big = np.iinfo(np.int64).max
    parts = [
        [index[axis].start or 0 for axis in axes],
        [big if index[axis].stop is None else index[axis].stop for axis in axes],
        axes,
        [index[axis].step or 1 for axis in axes],
    ]
    inputs = [
        graph.constant(f"{name}.{part}", np.array(values, np.int64), TensorProto.INT64)
        for part, values in zip(("starts", "ends", "axes", "steps"), parts, strict=True)
    ]
    return graph.node("Slice", [x, *inputs], name)


def _pad(graph: _Graph, x: str, pad: tuple[int, ...], rank: int, name: str) -> str:
    """``F.pad(x, pad)`` with zeros: torch lists (begin, end) from the last axis back, ONNX all begins then all ends."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return graph.node(
        "Pad", [x, graph.constant(f"{name}.pads", np.array(begins + ends, np.int64), TensorProto.INT64)], name
    )


def _standardize(graph: _Graph) -> str:
    """The uint8 image as ``qexp.data.normalize`` standardises it: the same float32 constants, the same two ops."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
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
        return _pad(graph, args[0], tuple(node.args[1]), node.args[0].meta["rank"], name)
    what = type(module).__name__ if module is not None else getattr(node.target, "__name__", str(node.target))
    raise Unsupported(f"{name} ({what}) has no ONNX export; qexp exports ResNet's operations only.")


def _ranks(graph: torch.fx.Graph, model: nn.Module, example: Tensor) -> None:
    """Record each node's output rank in ``node.meta`` (a pad needs its input's rank) by running the graph once."""
    interpreter = torch.fx.Interpreter(torch.fx.GraphModule(model, graph))
    original = interpreter.run_node

    def run_node(node: torch.fx.Node) -> Any:
        result = original(node)
        if isinstance(result, Tensor):
            node.meta["rank"] = result.ndim
        return result

    interpreter.run_node = run_node
    with torch.no_grad():
        interpreter.run(example)


def describe(model: nn.Module) -> str:
    """The graph's ``doc_string``: its input, and where its quantizers sit (a per-reader grid is kept as such)."""
    activations = quantizers(model, "activation")
    io = "input uint8 RGB N x 3 x 32 x 32, standardised in the graph; output logits"
    if not activations:
        return f"qexp: float model, BatchNorm folded; {io}."
    layout = (
        "one per tensor, at its producer, repeated unchanged after a slice or pad"
        if shared_grids(model)
        else "one per reader of each tensor"
    )
    return (
        f"qexp: {len(activations)} activation quantizers ({layout}; each Q/DQ pair carries one of ours, none merged), "
        f"integer weights with their scales; {io}."
    )


def to_onnx(model: nn.Module) -> onnx.ModelProto:
    """The ONNX graph of ``model`` (a frozen ``quantize_model`` result, or a float ResNet with BatchNorm folded).

    Input ``image``: uint8 ``N x 3 x 32 x 32`` RGB; output ``logits``: ``N x classes``. Raises
    ``Unsupported`` for a width or an operation ONNX (or this exporter) cannot carry.
    """
    model = model.eval()
    traced = _Tracer().trace(model)
    modules = dict(model.named_modules())
    _ranks(traced, model, torch.zeros(1, 3, 32, 32))
    graph = _Graph()
    names: dict[torch.fx.Node, str] = {}

    def value(arg: Any) -> Any:
        return names[arg] if isinstance(arg, torch.fx.Node) else arg

    output = None
    for node in traced.nodes:
        if node.op == "placeholder":
            names[node] = _standardize(graph)
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
    opset = max([FLOAT_OPSET, *graph.widths])
    exported = helper.make_model(proto, opset_imports=[helper.make_opsetid("", opset)], producer_name="qexp")
    exported.ir_version = min(exported.ir_version, onnx.IR_VERSION)
    onnx.checker.check_model(exported, full_check=True)
    return exported


def operator_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each operator ``model`` has."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
