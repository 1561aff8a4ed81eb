"""Learned rounding: AdaRound per layer, or per residual block in the style of BRECQ and QDrop.

AdaRound (Nagel et al. 2020, ``adaround.py``) keeps the grid of round-to-nearest and learns, for
every weight, whether to round down or up. Here the rounding of a unit's layers is fitted to the
squared error of the unit's output on the calibration images (summed over channels, averaged over
images and positions, as BRECQ's code does) plus AdaRound's regulariser, whose ``beta`` is annealed
so that every rounding variable ends at 0 or 1; the rounding is then made hard.

The unit decides what error is minimised:

* ``layer`` (AdaRound): each conv/linear layer's output (before its ReLU);
* ``block`` (BRECQ, Li et al. 2021): each residual block's output, so the rounding of ``conv1``
  may compensate errors of ``conv2`` and of the shortcut's quantizer; layers outside any block
  (the stem and the classifier) are units of their own. A block that holds one quantized layer
  and a float add (a per-layer sensitivity probe) is a unit too: that layer's rounding is fitted
  to the block's output.

A unit's input comes from the quantized model with every earlier unit already reconstructed,
so later units learn to absorb earlier errors; its target is the float model's output. Two
further options follow QDrop (Wei et al. 2022), which fits them jointly with the rounding:
the activation quantizers inside the unit learn their step size (``scale_lr > 0``: the
``LearnedStepQuantizer`` of ``core/lsq.py`` that QAT trains too, zero point fixed; BRECQ instead
learns step sizes in a second pass) and, while fitting, each activation value skips quantization
with probability ``drop`` (``qdrop.py``) and each value of the unit's input is taken from the
float model with the same probability, which flattens the loss surface the rounding is fitted to.
The masks come from a generator on the tensors' device seeded with ``seed``, so a run repeats on
CPU and GPU alike. Only calibration images (training data) are used: the last ``held_out``
fraction of them is never fitted, and each unit's errors before and after are measured on those
images, so that they show what the rounding does on images it was not fitted to (with
``held_out=0`` they are in-sample).

With shared activations (``QuantOutput``/``SharedGrid``) a tensor's one quantizer sits at its
producer, which may lie outside the unit that reads the tensor or inside the unit before it. A
shared step size belongs to the first unit that reads the tensor, as the per-reader quantizers of
a unit's input do: that unit records its input before the quantizer, learns the step size with
its own, and leaves it frozen for every later reader (in ``block`` units a block's conv1 and its
shortcut, both in the block; in ``layer`` units the conv1, whose add then reads it). A unit that
holds the producer of what it hands on is fitted, and its errors measured, before that grid --
its output is float, as without sharing -- since the grid is the next unit's to learn.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from qexp.errors import QexpError
from qexp.quant.core.capture import keep_input, keep_output, record
from qexp.quant.core.lsq import LearnedStepQuantizer, masked_choice
from qexp.quant.core.modules import (
    FakeQuantize,
    Mode,
    QuantLayer,
    QuantOutput,
    quantizers,
    shared_grids,
    swap_module,
)
from qexp.quant.core.patterns import find_patterns
from qexp.quant.custom.adaround import AdaRoundWeight, annealed_beta, rounding_regularizer
from qexp.quant.custom.qdrop import QDrop, qdrop_mask

log = logging.getLogger(__name__)

UNITS = ("layer", "block")


@dataclass(frozen=True)
class ReconstructionConfig:
    """How rounding is learned. The defaults are BRECQ's and QDrop's, with fewer steps to fit a CPU."""

    unit: str = "block"  # what one reconstruction fits: "layer" or "block"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3  # Adam, rounding logits
    scale_lr: float = 4e-5  # Adam, activation step sizes; 0 keeps them fixed
    drop: float = 0.5  # QDrop probability; 0 for plain AdaRound/BRECQ
    regularization: float = 0.01  # lambda of the rounding regulariser
    warmup: float = 0.2  # fraction of steps without the regulariser
    held_out: float = 0.125  # fraction of the calibration images never fitted, on which the errors are measured
    seed: int = 0  # of the image sampling and of QDrop's masks

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise QexpError(f"quant.reconstruct={self.unit!r} is not known; expected one of {UNITS} or null.")
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "scale_lr": self.scale_lr >= 0,
            "drop": 0 <= self.drop < 1,
            "regularization": self.regularization >= 0,
            "warmup": 0 <= self.warmup < 1,
            "held_out": 0 <= self.held_out < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise QexpError(
                    f"quant.reconstruction.{name}={getattr(self, name)!r} is out of range; expected steps and "
                    "batch_size >= 1, lr > 0, scale_lr and regularization >= 0, drop, warmup and held_out in [0, 1)."
                )


def units(quantized: nn.Module, reference: nn.Module, unit: str) -> list[str]:
    """Names of what is reconstructed, in forward order: layers, or residual blocks and the layers outside them.

    Blocks are those of the float ``reference`` (``find_patterns``) that hold a quantized layer,
    whether or not their add is quantized: in a probe that quantizes one layer of a block (the
    rest, add included, float) the block's output is still what that layer's rounding is fitted to.
    """
    layers = [name for name, m in quantized.named_modules() if isinstance(m, QuantLayer)]
    if unit == "layer":
        return layers
    blocks = [
        block.module
        for block in find_patterns(reference).blocks
        if any(layer.startswith(block.module + ".") for layer in layers)
    ]
    inside = {layer for layer in layers for block in blocks if layer.startswith(block + ".")}
    order = {name: index for index, (name, _) in enumerate(quantized.named_modules())}
    return sorted(blocks + [layer for layer in layers if layer not in inside], key=order.__getitem__)


def _fit(
    unit: nn.Module,
    inputs: Tensor,
    float_inputs: Tensor | None,
    targets: Tensor,
    config: ReconstructionConfig,
    rounding: list[AdaRoundWeight],
    scales: list[nn.Parameter],
    masks: torch.Generator,
    bar: tqdm,
) -> None:
    """Adam on the rounding logits (and step sizes): output error plus the annealed rounding regulariser.

    ``masks`` draws QDrop's masks of the unit's input here and of its activations in the stand-ins.
    """
    groups = [{"params": [r.logits for r in rounding], "lr": config.lr}]
    if scales and config.scale_lr > 0:
        groups.append({"params": scales, "lr": config.scale_lr})
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.enable_grad():
        for step in range(config.steps):
            index = torch.randint(len(inputs), (config.batch_size,), generator=generator)
            x = inputs[index]
            if float_inputs is not None:
                x = masked_choice(qdrop_mask(x, config.drop, masks), float_inputs[index], x)
            loss = output_error(unit(x), targets[index])
            beta = annealed_beta(step, config.steps, config.warmup)
            if beta is not None:
                loss = loss + config.regularization * sum(rounding_regularizer(r.rounding(), beta) for r in rounding)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()


def output_error(output: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over channels (dim 1), averaged over images and positions."""
    return (output - target).pow(2).sum(1).mean()


@torch.no_grad()
def _error(unit: nn.Module, inputs: Tensor, targets: Tensor, chunk: int = 256) -> float:
    """``output_error`` of the unit as it now is, over all of ``inputs``."""
    errors = [output_error(unit(inputs[i : i + chunk]), targets[i : i + chunk]) * len(inputs[i : i + chunk])
              for i in range(0, len(inputs), chunk)]  # fmt: skip
    return float(sum(errors) / len(inputs))


def input_grid(unit: nn.Module) -> FakeQuantize | None:
    """The shared quantizer of ``unit``'s input: read inside the unit, applied by a producer outside it."""
    inside = {id(quantizer) for quantizer in quantizers(unit).values()}
    outside = {id(grid.quantizer): grid.quantizer for grid in shared_grids(unit) if id(grid.quantizer) not in inside}
    assert len(outside) <= 1, "a unit has one input, so at most one grid from outside"
    return next(iter(outside.values()), None)


def output_grids(unit: nn.Module) -> list[FakeQuantize]:
    """The shared quantizers ``unit`` applies to what it hands on: produced inside it, read by no reader inside it."""
    read = {id(grid.quantizer) for grid in shared_grids(unit)}
    produced = [m.output_quantizer for m in unit.modules() if isinstance(m, QuantOutput)]
    return [quantizer for quantizer in produced if id(quantizer) not in read]


def calibration_split(images: int, held_out: float) -> tuple[slice, slice]:
    """The calibration images a unit is fitted on and those its errors are measured on, as slices.

    The last ``round(held_out * images)`` images are held out: never fitted, only measured. With
    ``held_out=0`` both slices are every image and the errors are in-sample.
    """
    count = round(held_out * images)
    if count == 0 and held_out == 0:
        return slice(None), slice(None)
    if not 0 < count < images:
        raise QexpError(
            f"quant.reconstruction.held_out={held_out!r} of {images} calibration images holds out {count}; "
            "expected at least one image held out and one fitted (more calibration images, or held_out=0)."
        )
    return slice(0, images - count), slice(images - count, None)


def describe_split(images: int, held_out: float) -> str:
    """Which calibration images the errors are measured on, for the log."""
    fit, measured = calibration_split(images, held_out)
    if measured == fit:
        return f"the {images} fitted calibration images (in-sample)"
    return f"the {images - measured.start} held-out calibration images {measured.start}..{images - 1} (never fitted)"


@contextlib.contextmanager
def standing_in(model: nn.Module, stand_ins: dict[str, nn.Module]) -> Iterator[None]:
    """Put each stand-in where the submodule of that name is; put the originals back even if the body raises.

    Train/eval flags of ``model``'s modules are restored as well, so a reconstruction that fails
    leaves the model as it found it.
    """
    modes = {module: module.training for module in model.modules()}
    originals = {}
    try:
        for name, stand_in in stand_ins.items():
            originals[name] = swap_module(model, name, stand_in)
        yield
    finally:
        for name, original in reversed(originals.items()):
            swap_module(model, name, original)
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """``requires_grad`` off for ``model``'s parameters while the body runs, then as it was, even if the body raises."""
    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def passing_through(grids: Sequence[FakeQuantize]) -> Iterator[None]:
    """Switch ``grids`` to float while the block runs: what they would quantize is read before them."""
    modes = [grid.mode for grid in grids]
    for grid in grids:
        grid.mode = Mode.FLOAT
    try:
        yield
    finally:
        for grid, mode in zip(grids, modes, strict=True):
            grid.mode = mode


def reconstruct_unit(
    unit: nn.Module,
    inputs: Tensor,
    float_inputs: Tensor,
    targets: Tensor,
    config: ReconstructionConfig,
    bar: tqdm,
    shared_input: FakeQuantize | None = None,
) -> tuple[float, float]:
    """Learn the rounding (and activation step sizes) of one frozen unit in place.

    Fits on the first images of ``inputs`` and returns the unit's output error on the held-out
    rest (``calibration_split``) with round-to-nearest before and with the learned hard rounding
    after. The unit's quantizers are swapped for trainable stand-ins and swapped back afterwards
    -- also when fitting raises -- with the result written into them: the hard rounding into the
    layer weights, the learned step sizes into the activation quantizers' scales.
    ``shared_input``: the shared quantizer of the unit's input that this unit learns (see the
    module docstring); ``inputs`` are then taken before it, and it quantizes them first.
    """
    fitted = unit if shared_input is None else nn.Sequential(shared_input, unit)
    fit, measured = calibration_split(len(inputs), config.held_out)
    handed_on = output_grids(unit)
    not_learned = {id(grid) for grid in handed_on}
    masks = torch.Generator(inputs.device).manual_seed(config.seed)
    with passing_through(handed_on):
        before = _error(fitted, inputs[measured], targets[measured])
        layers = {name: m for name, m in fitted.named_modules() if isinstance(m, QuantLayer)}
        rounding = {name: AdaRoundWeight(layer.weight_quantizer, layer.layer.weight) for name, layer in layers.items()}
        learned = {}  # name in ``fitted`` -> learned-step stand-in of the activation quantizer there
        if config.scale_lr > 0 or config.drop > 0:
            # Without LSQ's gradient scale: Adam divides a constant factor out (up to its epsilon),
            # so the factor would only move the steps through that epsilon.
            for name, quantizer in quantizers(fitted, "activation").items():
                if id(quantizer) not in not_learned:
                    learned[name] = LearnedStepQuantizer(quantizer, per_image=True, gradient_scale=False)
        stand_ins = {_child(name, "weight_quantizer"): adaround for name, adaround in rounding.items()}
        for name, stand_in in learned.items():
            stand_ins[name] = QDrop(stand_in, config.drop, masks) if config.drop > 0 else stand_in
        with standing_in(fitted, stand_ins):
            fitted.train()
            inputs_to_mix = float_inputs[fit] if config.drop > 0 else None
            scales = [stand_in.scale for stand_in in learned.values()]
            _fit(fitted, inputs[fit], inputs_to_mix, targets[fit], config, list(rounding.values()), scales, masks, bar)
            fitted.eval()
            with torch.no_grad():
                for name, adaround in rounding.items():
                    adaround.hard = True
                    layers[name].layer.weight.copy_(adaround(layers[name].layer.weight))
            for stand_in in learned.values():
                stand_in.write_back()
        return before, _error(fitted, inputs[measured], targets[measured])


def _child(module: str, attribute: str) -> str:
    """The name of ``module``'s submodule ``attribute``, where ``module`` may be the root ("")."""
    return f"{module}.{attribute}" if module else attribute


def reconstruct(
    quantized: nn.Module, reference: nn.Module, batches: Sequence[Tensor], config: ReconstructionConfig
) -> dict[str, tuple[float, float]]:
    """Learn the rounding of every frozen ``QuantLayer`` of ``quantized``, unit by unit.

    ``reference`` is the float model ``quantized`` was made from (BatchNorm folded, same module
    names); it provides the targets and is only read. Afterwards every layer's weight holds its
    dequantized integers, so the frozen quantizers, the export and the integer kernels see the
    learned rounding. Returns each unit's output error before and after, measured on the held-out
    calibration images (``calibration_split``; the log says which).
    """
    names = units(quantized, reference, config.unit)
    measured_on = describe_split(sum(len(batch) for batch in batches), config.held_out)
    log.info("reconstruct (%s): output errors measured on %s", config.unit, measured_on)
    sample = "in-sample" if config.held_out == 0 else "held-out"
    errors = {}
    learned_grids: set[int] = set()  # shared quantizers an earlier unit learned: later readers see them frozen
    progress = tqdm(total=len(names) * config.steps, desc=f"reconstruct ({config.unit})", disable=None)
    with progress as bar, frozen_parameters(quantized):
        for name in names:
            float_inputs, targets = (
                record(reference, [name], batches, keep, stop=True)[name] for keep in (keep_input, keep_output)
            )
            unit = quantized.get_submodule(name)
            shared_input = input_grid(unit)
            if shared_input is not None and id(shared_input) in learned_grids:
                shared_input = None
            with passing_through([] if shared_input is None else [shared_input]):
                inputs = record(quantized, [name], batches, keep_input, stop=True)[name]
            errors[name] = reconstruct_unit(unit, inputs, float_inputs, targets, config, bar, shared_input)
            if shared_input is not None:
                learned_grids.add(id(shared_input))
            log.info("reconstructed %s: output error %.4g -> %.4g (%s)", name, *errors[name], sample)
    return errors
