"""Our post-training quantization: fold BatchNorm, insert quantizers, calibrate, freeze.

1. ``fold_batchnorm``: weights are quantized as the integer kernel would see them.
2. ``insert_quantizers``: every conv/linear becomes a ``QuantLayer`` (weight + input
   quantizer), every residual ``Add`` a ``QuantAdd``. Weights: signed grid with zero at 0 (narrow
   and symmetric, or full range with ``weight_grid="full"``), per output channel by default.
   Activations: asymmetric unsigned grid, per tensor; with ``shared_activations`` a tensor that
   several of them read gets one quantizer at its producer.
3. ``calibrate``: activation observers record the float model's activations on calibration
   batches (training images only).
4. ``freeze``: weight observers see their (folded) weight once; every quantizer computes its
   scale and zero point; the model switches to fake-quantized inference.

Options that recover low-bit accuracy slot in around these steps: cross-layer equalization
(``equalize.py``) and mixed precision (``mixed.py``, which chooses each layer's weight width)
between 1 and 2, learned rounding (``reconstruct.py``) and bias correction
(``bias_correction.py``) after 4. All of them see calibration images only.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from qexp.errors import QexpError
from qexp.quant.core.affine import check_bits
from qexp.quant.core.calibration import EMPTY_CALIBRATION
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.core.modules import (
    FakeQuantize,
    Mode,
    QuantAdd,
    QuantLayer,
    QuantOutput,
    SharedGrid,
    layer_names,
    quantizers,
    set_mode,
    swap_module,
)
from qexp.quant.core.observers import GRANULARITIES, OBSERVERS, WEIGHT_GRIDS, PercentileObserver
from qexp.quant.core.patterns import SharedTensor, find_patterns
from qexp.quant.custom.bias_correction import correct_bias
from qexp.quant.custom.equalize import equalize_blocks
from qexp.quant.custom.mixed import assign_bits, check_average_bits
from qexp.quant.custom.reconstruct import ReconstructionConfig, reconstruct

# A mixed-precision probe measures one layer's weight width; its input is quantized too, at a
# width that barely rounds, so that the probe runs the same QuantLayer as the final model.
PROBE_INPUT_BITS = 16


@dataclass(frozen=True)
class PTQConfig:
    """What the user asks for. ``first_last_bits=None`` keeps the first conv and last linear at ``w_bits``/``a_bits``.

    The per-layer weight widths that mixed precision computes from ``average_bits`` are the plan,
    not the request: ``quantize_model`` hands them to ``insert_quantizers`` as ``weight_bits``.
    """

    w_bits: int
    a_bits: int
    observer: str = "minmax"
    granularity: str = "per_channel"
    first_last_bits: int | None = None
    percentile: float = 99.99
    equalize: bool = False
    bias_correction: bool = False
    reconstruction: ReconstructionConfig | None = None
    average_bits: float | None = None  # mixed precision: weight widths chosen per layer to fit this average
    mixed_widths: tuple[int, ...] = (8, 4, 2)
    shared_activations: bool = True  # one quantizer per tensor, at its producer (False: one per consumer)
    weight_grid: str = "narrow"  # narrow: symmetric signed (ternary at 2 bits); full: one level more (affine.py)

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "quant.w_bits")
        check_bits(self.a_bits, "quant.a_bits")
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "quant.first_last_bits")
        for bits in self.mixed_widths:
            check_bits(bits, "quant.mixed_widths")
        if self.average_bits is not None and self.first_last_bits is not None:
            raise QexpError(
                f"quant.average_bits={self.average_bits} and quant.first_last_bits={self.first_last_bits} cannot be "
                "combined: mixed precision chooses the first and last layers' widths too; set one of them to null."
            )
        if self.average_bits is not None:
            check_average_bits(self.average_bits, self.mixed_widths)
        if self.observer not in OBSERVERS:
            raise QexpError(f"observer={self.observer!r} is not known; expected one of {sorted(OBSERVERS)}.")
        if self.granularity not in GRANULARITIES:
            raise QexpError(f"quant.granularity={self.granularity!r} is not known; expected one of {GRANULARITIES}.")
        if self.weight_grid not in WEIGHT_GRIDS:
            raise QexpError(f"quant.weight_grid={self.weight_grid!r} is not known; expected one of {WEIGHT_GRIDS}.")

    def make_quantizer(self, bits: int, weight: Tensor | None = None) -> FakeQuantize:
        """A quantizer for ``weight``, or for an activation when ``weight`` is None.

        Weights: signed (on the ``weight_grid``), per output channel unless ``granularity`` is per
        tensor; a per-channel quantizer is sized for the weight's shape, so its state has that
        shape from the start. Activations: unsigned, per tensor.
        """
        observer_class = OBSERVERS[self.observer]
        if observer_class is PercentileObserver:
            observer_class = partial(PercentileObserver, percentile=self.percentile)
        if weight is None:
            return FakeQuantize(observer_class(bits, symmetric=False))
        narrow = self.weight_grid == "narrow"
        if self.granularity == "per_channel":
            return FakeQuantize(observer_class(bits, symmetric=True, axis=0, shape=weight.shape, narrow=narrow))
        return FakeQuantize(observer_class(bits, symmetric=True, narrow=narrow))


def insert_quantizers(
    model: nn.Module,
    config: PTQConfig,
    only: Collection[str] | None = None,
    weight_bits: Mapping[str, int] | None = None,
) -> nn.Module:
    """Swap layers and residual adds (``find_patterns``) for their quantized wrappers, in place; returns ``model``.

    ``only`` names the layers to quantize (adds then stay float): a per-layer sensitivity study.
    ``weight_bits`` (mixed precision's plan) gives layers a weight width other than ``config.w_bits``.
    With ``config.shared_activations`` the tensors that two or more of the quantized operands
    read are quantized once, at their producer (``share_grids``).
    """
    weight_bits = weight_bits or {}
    layers = layer_names(model)
    edge_layers = {layers[0], layers[-1]} if config.first_last_bits is not None else set()
    if only is not None:
        unknown = set(only) - set(layers)
        if unknown:
            raise ValueError(f"layers {sorted(unknown)} are not layers of the model; expected any of {layers}.")
        layers = [name for name in layers if name in only]
    patterns = find_patterns(model)
    adds = patterns.adds if only is None else ()
    operand_bits = {(name, 0): config.first_last_bits if name in edge_layers else config.a_bits for name in layers}
    operand_bits.update({(name, index): config.a_bits for name in adds for index in (0, 1)})
    shared = patterns.shared if config.shared_activations else ()
    grids, producers = share_grids(shared, operand_bits, config)

    def operand_quantizer(operand: tuple[str, int]) -> FakeQuantize | SharedGrid:
        return grids[operand] if operand in grids else config.make_quantizer(operand_bits[operand])

    for name in layers:
        w_bits = config.first_last_bits if name in edge_layers else weight_bits.get(name, config.w_bits)
        layer = model.get_submodule(name)
        wrapped = QuantLayer(layer, config.make_quantizer(w_bits, layer.weight), operand_quantizer((name, 0)))
        swap_module(model, name, wrapped)
    for name in adds:
        swap_module(model, name, QuantAdd(operand_quantizer((name, 0)), operand_quantizer((name, 1))))
    for name, quantizer in producers.items():  # last: a producer may itself be a layer or an add, now wrapped
        swap_module(model, name, QuantOutput(model.get_submodule(name), quantizer))
    return model


def share_grids(
    shared: Iterable[SharedTensor], operand_bits: Mapping[tuple[str, int], int], config: PTQConfig
) -> tuple[dict[tuple[str, int], SharedGrid], dict[str, FakeQuantize]]:
    """One activation quantizer per tensor that two or more quantized operands read.

    ``operand_bits`` holds the operands that are quantized, ``(module, operand index)``, and the
    width each asks for; a shared quantizer takes the widest of its readers'. Returns the
    ``SharedGrid`` each of those operands reads, and the quantizer of each producer by name.
    """
    grids, producers = {}, {}
    for tensor in shared:
        readers = [reader for reader in tensor.readers if reader in operand_bits]
        if len(readers) < 2:
            continue
        quantizer = config.make_quantizer(max(operand_bits[reader] for reader in readers))
        producers[tensor.producer] = quantizer
        grids.update({reader: SharedGrid(quantizer, tensor.producer) for reader in readers})
    return grids, producers


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Run calibration batches through the float model with activation observers on; return the image count."""
    set_mode(model, weights=Mode.FLOAT, activations=Mode.OBSERVE)
    model.eval()
    images = 0
    for batch in batches:
        model(batch)
        images += len(batch)
    if images == 0:
        raise ValueError(EMPTY_CALIBRATION)
    return images


@torch.no_grad()
def freeze(model: nn.Module) -> None:
    """Observe each weight once, compute every quantizer's parameters, switch to quantized inference."""
    for module in model.modules():
        if isinstance(module, QuantLayer):
            module.weight_quantizer.observer(module.layer.weight)
    for quantizer in quantizers(model).values():
        quantizer.freeze()
    set_mode(model, weights=Mode.QUANTIZE, activations=Mode.QUANTIZE)


def choose_layer_bits(
    model: nn.Module, reference: nn.Module, config: PTQConfig, batches: list[Tensor]
) -> dict[str, int]:
    """Per-layer weight widths within ``config.average_bits`` (``mixed.py``), measured against ``model``'s logits.

    ``reference`` is ``model`` BatchNorm-folded (and equalized when ``config.equalize``), made once
    for every probe. A probe wraps one of its layers in place -- weights at the width in question
    with this config's observer and granularity, input at ``PROBE_INPUT_BITS`` -- calibrates it,
    takes the logits and swaps the float layer back: no other layer, add, reconstruction or bias
    correction is involved, and ``reference`` is left as it was.
    """

    @torch.no_grad()
    def logits_alone(name: str, bits: int) -> Tensor:
        layer = reference.get_submodule(name)
        probe = QuantLayer(layer, config.make_quantizer(bits, layer.weight), config.make_quantizer(PROBE_INPUT_BITS))
        swap_module(reference, name, probe)
        try:
            calibrate(reference, batches)
            freeze(reference)
            return torch.cat([reference(batch) for batch in batches])
        finally:
            swap_module(reference, name, layer)

    return assign_bits(model, batches, layer_names(model), config.mixed_widths, config.average_bits, logits_alone)


def quantize_model(
    model: nn.Module, config: PTQConfig, calibration_batches: Iterable[Tensor], only: Collection[str] | None = None
) -> tuple[nn.Module, int]:
    """A fake-quantized copy of ``model`` and the number of calibration images it saw."""
    batches = list(calibration_batches)
    reference = fold_batchnorm(model)
    if config.equalize:
        equalize_blocks(reference)
    weight_bits = None if config.average_bits is None else choose_layer_bits(model, reference, config, batches)
    quantized = insert_quantizers(copy.deepcopy(reference), config, only, weight_bits)
    images = calibrate(quantized, batches)
    freeze(quantized)
    if config.reconstruction is not None:
        reconstruct(quantized, reference, batches, config.reconstruction)
    if config.bias_correction:
        correct_bias(quantized, reference, batches)
    return quantized, images
