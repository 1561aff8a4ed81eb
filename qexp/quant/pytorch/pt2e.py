"""PyTorch's current PTQ flow: ``torch.export`` -> torchao pt2e with the x86 Inductor quantizer -> Inductor.

``torch.ao.quantization``'s FX flow (``fx.py``) is deprecated in favour of this one, and
this is the flow that gets int8 speed from ``torch.compile`` on a CPU:

1. ``torch.export.export`` captures the float model as an ATen graph, with a dynamic batch
   dimension so that the quantized model runs at batch 1 and at any other batch size;
2. ``prepare_pt2e`` with ``X86InductorQuantizer`` and its default x86 config annotates the
   graph (int8 symmetric per-channel weights, uint8 per-tensor activations, conv+BN folded,
   conv+add+ReLU patterns) and inserts observers; calibration runs the calibration images;
3. ``convert_pt2e`` replaces observers by quantize/dequantize pairs around float ops (the
   *reference* graph, which is what top-1 on an un-lowered model measures);
4. ``torch.compile`` with Inductor freezing fuses the q/dq patterns into oneDNN int8 kernels
   (the *lowered* model, which is what runs fast). Both are evaluated.

``observer=mse`` keeps the quantizer's default activation observer, ``HistogramObserver``
(which searches the range with the least L2 quantization error), ``observer=minmax`` swaps in
``MinMaxObserver``; weights keep ``PerChannelMinMaxObserver`` either way. Activations use the
full uint8 range (the x86 quantizer's default since VNNI CPUs, unlike FX's ``reduce_range``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable

import torch
import torch._inductor.config
from torch import Tensor, nn

from qexp.errors import QexpError
from qexp.quant.core.calibration import first_and_all
from qexp.quant.unsupported import Unsupported

OBSERVERS = ("minmax", "mse")
MAX_BATCH = 4096


def check_supported(bits: tuple[int, int], observer: str, granularity: str) -> None:
    """Raise ``Unsupported`` before any work for what the x86 Inductor quantizer lacks; ``QexpError``: no torchao."""
    if bits != (8, 8):
        raise Unsupported(f"W{bits[0]}A{bits[1]}: the pt2e x86 Inductor quantizer is int8 only")
    if observer not in OBSERVERS:
        raise Unsupported(
            f"observer={observer}: the x86 Inductor quantizer takes a MinMax (minmax) or Histogram (mse) "
            "activation observer; there is no percentile observer"
        )
    if granularity != "per_channel":
        raise Unsupported(f"granularity={granularity}: the x86 Inductor quantizer's weights are per channel")
    if importlib.util.find_spec("torchao") is None:
        raise QexpError("quant.flow=pt2e needs torchao, which is not installed; pip install 'torchao>=0.18'.")


def x86_quantizer(observer: str):  # -> X86InductorQuantizer
    """The x86 Inductor quantizer with its default config, activation observer chosen by ``observer``.

    torchao is imported here, not at module level: importing its x86 quantizer registers
    Inductor passes globally, which no other path of qexp should get as a side effect.
    """
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    if observer not in OBSERVERS:
        raise ValueError(f"observer={observer!r} has no pt2e counterpart here; expected one of {OBSERVERS}.")
    config = get_default_x86_inductor_quantization_config()  # cached and shared: replaced, never mutated
    if observer == "minmax":
        minmax = MinMaxObserver.with_args(eps=2**-12)
        spec = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=minmax)
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    return X86InductorQuantizer().set_global(config)


def export(model: nn.Module, example: Tensor) -> torch.fx.GraphModule:
    """``model`` (in eval mode) as an exported graph module whose batch dimension is dynamic.

    ``example`` must hold at least 2 images: torch.export specialises a batch of 1 to a constant.
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()


@torch.no_grad()
def quantize_pt2e(model: nn.Module, batches: Iterable[Tensor], observer: str) -> tuple[torch.fx.GraphModule, int]:
    """The converted (reference, un-lowered) int8 graph of ``model`` and the number of calibration images."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = x86_quantizer(observer)
    first, batches = first_and_all(batches)
    prepared = prepare_pt2e(export(model, first[:2] if len(first) >= 2 else first.repeat(2, 1, 1, 1)), quantizer)
    images = 0
    for batch in batches:
        prepared(batch)
        images += len(batch)
    return convert_pt2e(prepared), images


def used_state(converted: torch.fx.GraphModule) -> dict[str, Tensor]:
    """The tensors the converted graph reads: int8 weights, their scales and zero points, biases.

    ``convert_pt2e`` folds the weights into int8 constants but leaves the original fp32
    parameters attached to the module, unused; what a deployment stores is what the graph reads.
    """
    read = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    return {name: tensor for name, tensor in converted.state_dict().items() if name in read}


class Graph(nn.Module):
    """An exported (or compiled) graph behind a plain module, run without autograd.

    Exported graph modules refuse ``.eval()``/``.train()``, which evaluation code calls; the
    graph is held outside the module tree so those calls stop here. ``freezing=True``: Inductor
    freezing is switched on while the graph runs, so that a compilation triggered by a new
    batch size also treats the weights as constants (set only in ``compile``'s options, dynamo
    would trace them as inputs and the int8 weight packing would fail).
    """

    def __init__(self, graph: nn.Module, freezing: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "graph", graph)
        self.freezing = freezing

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad(), torch._inductor.config.patch(freezing=self.freezing):
            return self.graph(x)


def lower(converted: torch.fx.GraphModule, example: Tensor) -> Graph:
    """Compile ``converted`` with Inductor freezing and run ``example`` once, so compilation happens here.

    Compiled for static shapes: a new batch size compiles once more and gets kernels
    specialised to it.
    """
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  registers the int8 fusion passes

    lowered = Graph(torch.compile(converted, dynamic=False), freezing=True)
    lowered(example)
    return lowered
