"""PyTorch's FX-flow PTQ at 8 bits, for comparison with ours: static int8 for the x86 backend.

``prepare_fx`` -> calibrate -> ``convert_fx``. FX fuses conv+BN+ReLU and add+ReLU itself and
observes the residual adds, so the converted model runs on PyTorch's quantized CPU kernels end
to end. Weights: int8, symmetric, per output channel (or per tensor); activations: uint8,
asymmetric, per tensor. ``observer=minmax`` uses PyTorch's MinMax observers; ``observer=mse``
its HistogramObserver for activations, which searches the range minimising the L2
quantization error. Other bit widths and ``observer=percentile`` have no PyTorch counterpart
and are reported as unsupported, so a sweep over the whole grid completes; 16 bits is
PyTorch's float16 (``float16.py``).

``torch.ao.quantization`` is deprecated in favour of torchao's pt2e flow (``pt2e.py``); its one
deprecation message is filtered where we call it, other quantization warnings stay visible.
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

from qexp.errors import QexpError
from qexp.quant.core.calibration import first_and_all
from qexp.quant.core.observers import GRANULARITIES
from qexp.quant.unsupported import Unsupported

DEPRECATION_MESSAGE = r"torch\.ao\.quantization is deprecated"
# Quantized tensors (quint8/qint8) themselves are marked deprecated in favour of torchao.
QUANTIZED_TENSOR_MESSAGE = r"torch\.quantize_per_tensor, torch\.quantize_per_channel"


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATION_MESSAGE, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=QUANTIZED_TENSOR_MESSAGE, category=UserWarning)
        yield


def check_supported(bits: tuple[int, int], observer: str, granularity: str) -> None:
    """Raise ``Unsupported`` before any work for a ``(w_bits, a_bits)`` cell the FX flow (or float16) cannot do."""
    if bits not in ((8, 8), (16, 16)):
        raise Unsupported(
            f"W{bits[0]}A{bits[1]}: torch.ao.quantization offers int8 (and float16) only; "
            "its CPU kernels have no 2-, 4- or mixed-width static quantization"
        )
    if bits == (8, 8):
        int8_qconfig_mapping(observer, granularity)  # raises for observers it lacks


def int8_qconfig_mapping(observer: str, granularity: str) -> QConfigMapping:
    """The x86 qconfig with the activation observer of ``observer`` and the weight granularity asked for.

    ``observer`` picks the *activation* observer; weights always use PyTorch's MinMax observer,
    as its x86 default does.
    """
    if granularity not in GRANULARITIES:
        raise QexpError(f"quant.granularity={granularity!r} is not known; expected one of {GRANULARITIES}.")

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
    first, batches = first_and_all(calibration_batches)
    with _quiet_deprecation():
        prepared = prepare_fx(float_model, mapping, example_inputs=(first[:1],))
        images = 0
        for batch in batches:
            prepared(batch.contiguous())
            images += len(batch)
        converted = convert_fx(prepared)
    check_converted(converted)
    return converted, images
