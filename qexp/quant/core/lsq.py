"""Learned step sizes (LSQ): the one quantizer with a trainable scale, used by QAT and by reconstruction.

Esser et al. (2020): a quantizer's step size ``s`` is a parameter trained with the rest. The
forward pass is the frozen quantizer's, ``x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s``;
the rounding is straight-through, so a value inside the grid's range passes its gradient on
unchanged and a clamped one passes none, and ``s`` gets ``round(x / s) - x / s`` from a value
inside the range and ``qmin - z`` or ``qmax - z`` from a clamped one. Because one ``s`` collects
that from every value it quantizes, LSQ multiplies its gradient by ``g = 1 / sqrt(N * qmax)``
(``N`` values share it), which puts step sizes and weights on the same footing for one learning
rate. Zero points stay where calibration put them (the real 0 stays on the grid).

``LearnedStepQuantizer`` stands in for a frozen ``FakeQuantize`` while something trains and gives
it back with the learned scale afterwards (``write_back``), so the trained model is the same kind
of model as our PTQ's: the integer export, the payload count and the evaluation read it unchanged.
Its two users:

* QAT (``qat/finetune.py``) swaps every quantizer of a frozen model for one (``learn_step_sizes``)
  and trains the step sizes with the weights by SGD, with LSQ's gradient scale;
* reconstruction (``custom/reconstruct.py``) swaps the activation quantizers of one unit and fits
  their step sizes with Adam, optionally inside QDrop (``custom/qdrop.py``), without the gradient
  scale (``gradient_scale=False``): Adam divides each step by the root mean square of the
  gradients, so a constant factor on them changes its steps only through its epsilon.

A shared activation quantizer (``quant.shared_activations``) is one module, at its producer, so it
gets one stand-in and its tensor one learned step size, which every reader's ``SharedGrid`` refers to.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from qexp.quant.core.affine import MIN_SCALE, along
from qexp.quant.core.modules import FakeQuantize, Mode, quantizers, swap_module


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` in the forward pass; in the backward pass its gradient multiplied by ``factor``."""
    scaled = x * factor
    return (x - scaled).detach() + scaled


def gradient_factor(values_per_scale: int, qmax: int) -> float:
    """LSQ's ``g = 1 / sqrt(N * qmax)`` for a step size shared by ``N`` values on a grid up to ``qmax``."""
    return 1.0 / math.sqrt(values_per_scale * qmax)


def masked_choice(mask: Tensor, where_one: Tensor, where_zero: Tensor) -> Tensor:
    """``torch.where(mask == 1, where_one, where_zero)`` for a 0/1 float ``mask``, as two products and a sum.

    The same values for finite inputs (one of the two products is zero; a zero may lose its sign).
    Measured on 262 144 values: 0.15 against 0.56 ms for ``torch.where`` with a boolean mask on the
    2-core Xeon with AMX; on the 2-core AMD EPYC an earlier session found the two to cost the same.
    """
    return where_one * mask + where_zero * (1 - mask)


class _LearnedFakeQuantize(torch.autograd.Function):
    """``dequantize(quantize(x))`` with LSQ's gradients to ``x`` and the scale, worked out in the forward pass.

    The values of ``affine.fake_quantize`` and the gradients autograd gives it in torch 2.14: a
    straight-through rounding, and nothing passed at either end of the grid, where clamp's gradient
    is 0 (a value on an end is treated as clamped; older torch releases passed it). Autograd records
    eight elementwise operations over the activation and replays a dozen backwards; here the forward
    pass keeps two tensors -- where the gradient passes, and ``d x_hat / d s`` per value -- and the
    backward pass is two products and a sum, and without a gradient to give it keeps nothing. Masks
    are 0/1 floats, not booleans (see ``masked_choice``). ``keep`` (QDrop) marks values that pass
    through in float: they take ``x``, its gradient, and give the scale none.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, keep: Tensor | None) -> Tensor:
        ratio = torch.div(x, scale)
        steps = ratio.round().add_(zero_point)
        if not any(ctx.needs_input_grad[:2]):  # evaluation: the values only
            out = steps.clamp_(qmin, qmax).sub_(zero_point).mul_(scale)
            return out if keep is None else masked_choice(keep, x, out)
        inside = ((steps > qmin) & (steps < qmax)).to(x.dtype)
        steps.clamp_(qmin, qmax).sub_(zero_point)  # q - z
        # d x_hat / d s: round(x / s) - x / s strictly inside the grid, q - z on its ends and beyond
        slope = steps - ratio.mul_(inside)
        out = steps.mul_(scale)
        if keep is not None:
            out = masked_choice(keep, x, out)
            inside = torch.maximum(inside, keep)
            slope.mul_(1 - keep)
        ctx.scale_shape = scale.shape
        ctx.save_for_backward(inside, slope)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        inside, slope = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_scale = (grad * slope).sum_to_size(ctx.scale_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_scale, None, None, None, None


class LearnedStepQuantizer(nn.Module):
    """Stands in for a frozen ``FakeQuantize``: same grid, a trainable scale, a fixed zero point.

    ``per_image``: the quantizer sees activations whose first dimension is the batch, so ``N`` is
    the number of values of one image (LSQ's features per layer); for a weight ``N`` is the number
    of values that share a scale (a channel, or the whole tensor). ``gradient_scale=False`` leaves
    the scale's gradient as it is (for an optimiser that normalises it anyway, see the module
    docstring); the forward pass is the same either way, up to an ulp of the scale.
    """

    def __init__(self, quantizer: FakeQuantize, per_image: bool, gradient_scale: bool = True) -> None:
        super().__init__()
        self.qmin, self.qmax = quantizer.qmin, quantizer.qmax
        self.axis = quantizer.observer.axis
        self.per_image = per_image
        self.gradient_scale = gradient_scale
        self.scale = nn.Parameter(quantizer.scale.detach().clone())
        self.register_buffer("zero_point", quantizer.zero_point.detach().clone())
        self._frozen = (quantizer,)  # a plain tuple: not a submodule, so neither trained nor saved twice

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``x`` on the grid of the learned step; where the 0/1 mask ``keep`` is 1, ``x`` as it is (QDrop)."""
        # Fake quantization is not exact under bf16: with 8 significant bits, x / s of an 8-bit
        # activation (up to 255) is off by up to a whole step, and at 4 bits rounding decisions
        # near a level still move. So the quantizer computes in float32 whatever autocast does;
        # only the convolutions that read its output run in bf16, whose rounding of a grid value
        # (2^-9 relative) is the error bf16 training of the float model already accepts.
        x = x.float()
        keep = None if keep is None else keep.to(x.dtype)
        scale = self.scale.clamp(min=MIN_SCALE)
        if self.gradient_scale:
            values = x[0].numel() if self.per_image else x.numel() // self.scale.numel()
            scale = scale_gradient(scale, gradient_factor(values, self.qmax))
        scale_along, zero_point = along(scale, x, self.axis), along(self.zero_point, x, self.axis)
        return _LearnedFakeQuantize.apply(x, scale_along, zero_point, self.qmin, self.qmax, keep)

    @torch.no_grad()
    def write_back(self) -> FakeQuantize:
        """The quantizer this stands for, its scale now the learned one."""
        quantizer = self._frozen[0]
        quantizer.scale.copy_(self.scale.clamp(min=MIN_SCALE))
        return quantizer

    def extra_repr(self) -> str:
        return f"range=[{self.qmin}, {self.qmax}], axis={self.axis}, gradient_scale={self.gradient_scale}"


def learn_step_sizes(model: nn.Module) -> nn.Module:
    """Swap every quantizer of a frozen model for a ``LearnedStepQuantizer``, in place; returns ``model``."""
    activations = quantizers(model, "activation")
    for name, quantizer in quantizers(model).items():
        assert quantizer.mode is Mode.QUANTIZE, f"{name} is not frozen: QAT starts from a frozen PTQ model"
        swap_module(model, name, LearnedStepQuantizer(quantizer, per_image=name in activations))
    return model


def freeze_step_sizes(model: nn.Module) -> nn.Module:
    """Undo ``learn_step_sizes`` in place: each quantizer back, holding its learned scale; returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LearnedStepQuantizer):
            swap_module(model, name, module.write_back())
    return model
