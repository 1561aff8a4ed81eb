"""PyTorch's own post-training quantization, for comparison with ours.

* 8 bits: static int8 with FX graph mode (``prepare_fx`` -> calibrate -> ``convert_fx``) for
  the x86 backend. FX fuses conv+BN+ReLU and add+ReLU itself and observes the residual adds, so
  the converted model runs on PyTorch's quantized CPU kernels end to end. Weights: int8,
  symmetric, per output channel (or per tensor); activations: uint8, asymmetric, per tensor.
  ``observer=minmax`` uses PyTorch's MinMax observers; ``observer=mse`` its HistogramObserver
  for activations, which searches the range minimising the L2 quantization error.
* 16 bits: ``torch.ao.quantization`` has float16 qconfigs but its x86 backend applies them to
  linear layers only -- convolutions stay fp32 -- and it has no int16 conv. The 16-bit row is
  therefore PyTorch's float16: the model cast with ``.half()`` and run in float16 on the CPU.
* Other bit widths and ``observer=percentile`` have no PyTorch counterpart and are reported as
  unsupported, so a sweep over the whole grid completes.

``torch.ao.quantization`` is deprecated in favour of torchao's pt2e flow; its one deprecation
message is filtered where we call it, other quantization warnings stay visible.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

from qexp.quant.custom_ptq import EMPTY_CALIBRATION, GRANULARITIES

DEPRECATION_MESSAGE = r"torch\.ao\.quantization is deprecated"
# Quantized tensors (quint8/qint8) themselves are marked deprecated in favour of torchao.
QUANTIZED_TENSOR_MESSAGE = r"torch\.quantize_per_tensor, torch\.quantize_per_channel"
FP16_REASON = (
    "float16, not int16: torch.ao.quantization has no int16 convolution and its float16 qconfig "
    "reaches only linear layers on x86, so this is the model cast with .half() and run in float16"
)


class Unsupported(Exception):
    """This combination has no PyTorch implementation; the message says why."""


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATION_MESSAGE, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=QUANTIZED_TENSOR_MESSAGE, category=UserWarning)
        yield


def int8_qconfig_mapping(observer: str, granularity: str) -> QConfigMapping:
    """The x86 qconfig with the activation observer of ``observer`` and the weight granularity asked for.

    ``observer`` picks the *activation* observer; weights always use PyTorch's MinMax observer,
    as its x86 default does.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"quant.granularity={granularity!r} is not known; expected one of {GRANULARITIES}.")

    activations = {"minmax": MinMaxObserver, "mse": HistogramObserver}
    if observer not in activations:
        raise Unsupported(
            f"observer={observer!r} has no counterpart in torch.ao.quantization (it offers minmax and the "
            "L2-minimising histogram observer, used for observer=mse)"
        )
    # Activations in [0, 127] (7 bits), as x86's default qconfig does with reduce_range: the
    # VNNI kernels' u8 x s8 products can overflow their 16-bit intermediate sums otherwise.
    activation = activations[observer].with_args(dtype=torch.quint8, quant_min=0, quant_max=127)
    if granularity == "per_channel":
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def check_converted(model: nn.Module) -> None:
    """Fail unless every convolution and linear layer became a quantized module."""
    float_layers = [name for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if float_layers:
        raise RuntimeError(f"FX conversion left float layers {float_layers}: calibration did not reach them")


@torch.no_grad()
def quantize_int8(
    model: nn.Module, calibration_batches: Iterable[Tensor], observer: str, granularity: str
) -> tuple[nn.Module, int]:
    """FX static int8 quantization for the x86 backend; returns the converted model and the calibration image count."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    mapping = int8_qconfig_mapping(observer, granularity)
    float_model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError(EMPTY_CALIBRATION)
    with _quiet_deprecation():
        prepared = prepare_fx(float_model, mapping, example_inputs=(first[:1],))
        images = 0
        for batch in (first, *batches):
            prepared(batch.contiguous())
            images += len(batch)
        converted = convert_fx(prepared)
    check_converted(converted)
    return converted, images


def to_float16(model: nn.Module) -> nn.Module:
    """A float16 copy of ``model`` that takes and returns float32 tensors."""
    return _Float16(copy.deepcopy(model).eval().half().to(memory_format=torch.contiguous_format))


class _Float16(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half().contiguous()).float()
