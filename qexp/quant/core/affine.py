"""Affine quantization maths as pure functions: range -> (scale, zero point), quantize, dequantize.

A b-bit quantizer maps a real ``x`` to an integer ``q = clamp(round(x / s) + z, qmin, qmax)``
and back to ``x_hat = (q - z) * s``. Two grids are used:

* **symmetric** (signed, for weights): ``z = 0`` and the *narrow* range
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, so the grid is symmetric around zero and at 2 bits it is
  the ternary ``{-s, 0, s}``. ``s = max(|min|, |max|) / (2^(b-1) - 1)``. The *full* signed range
  ``[-2^(b-1), 2^(b-1) - 1]`` (``narrow=False``) keeps ``z = 0`` and uses the code the narrow one
  wastes: at 2 bits ``{-2s, -s, 0, s}``, four levels for the same two bits, with
  ``s = max(min / qmin, max / qmax)`` so that both ends of the range fit.
* **asymmetric** (unsigned, for activations): ``[0, 2^b - 1]``,
  ``s = (max - min) / (2^b - 1)`` and ``z = round(-min / s)``. The range is first widened to
  contain 0, so that the real zero -- ReLU outputs, zero padding -- is exactly representable:
  ``x = 0`` maps to ``q = z`` and back to ``(z - z) * s = 0``.

Scales are floored at ``MIN_SCALE`` so a constant tensor or a dead channel never divides by
zero. Per-channel parameters are vectors along ``axis`` and are broadcast by ``along``.

Every integer qexp makes -- in the simulated forward pass (``fake_quantize_frozen``, what a frozen
quantizer computes), in the integer export and in the ONNX graph -- is rounded one way: a float
division ``x / s``, rounded half to even (``torch.round``), plus the zero point, clamped. That is
ONNX's ``QuantizeLinear`` as ONNX Runtime computes it, so the integers stored and the values a
runtime reads are those the simulation evaluated, bit for bit. PyTorch's own kernels
(``torch.fake_quantize_per_tensor_affine``, ``quantize_per_tensor``, torchao's ``quantize_affine``)
multiply by ``1 / s`` instead, which sends a value within an ulp of halfway between two levels
to the other neighbour; qexp's quantizers do not use them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qexp.errors import QexpError

MIN_BITS, MAX_BITS = 2, 16
MIN_SCALE = 1e-8


def check_bits(bits: int, name: str = "bits") -> int:
    """Return ``bits`` if it is an integer in ``[MIN_BITS, MAX_BITS]``; raise ``QexpError`` otherwise.

    Widths come from the user's config (``name`` says which value), so a bad one is the user's to fix.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QexpError(f"{name}={bits!r} is not supported; expected an integer from {MIN_BITS} to {MAX_BITS}.")
    return bits


def quant_range(bits: int, symmetric: bool, narrow: bool = True) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)``: signed when ``symmetric`` (narrow, or full if not ``narrow``), else unsigned."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def choose_qparams(
    min_val: Tensor, max_val: Tensor, bits: int, symmetric: bool, narrow: bool = True
) -> tuple[Tensor, Tensor]:
    """``(scale, zero_point)`` for the range ``[min_val, max_val]`` (scalars or per-channel vectors).

    ``zero_point`` is an integer-valued float tensor: it is rounded so that 0 lies on the grid.
    """
    qmin, qmax = quant_range(bits, symmetric, narrow)
    min_val = torch.clamp(min_val, max=0.0)
    max_val = torch.clamp(max_val, min=0.0)
    if symmetric:  # narrow: max(|min|, max) / qmax; full: the negative end has one level more
        scale = torch.maximum(min_val / qmin, max_val / qmax)
        zero_point = torch.zeros_like(scale)
    else:
        scale = (max_val - min_val) / (qmax - qmin)
        zero_point = (qmin - min_val / scale.clamp(min=MIN_SCALE)).round().clamp(qmin, qmax)
    return scale.clamp(min=MIN_SCALE), zero_point


def along(param: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """Reshape a per-channel vector to broadcast against ``x`` along ``axis``."""
    if axis is None or param.ndim == 0:
        return param
    shape = [1] * x.ndim
    shape[axis] = -1
    return param.reshape(shape)


def _unclamped_integers(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """``round(x / s) + z`` with ``s`` and ``z`` broadcast already: the one rounding (see the module docstring).

    One new tensor, rounded and shifted in place: the same IEEE operations as ``torch.round(x / s) + z``,
    without two more tensors of the activation's size to allocate (what evaluation spent most time on).
    """
    return torch.div(x, scale).round_().add_(zero_point)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None) -> Tensor:
    """Integers (as a float tensor) ``clamp(round(x / s) + z, qmin, qmax)``, ties to even."""
    scale, zero_point = along(scale, x, axis), along(zero_point, x, axis)
    return torch.clamp(_unclamped_integers(x, scale, zero_point), qmin, qmax)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None) -> Tensor:
    """Reals ``(q - z) * s``."""
    return (q - along(zero_point, q, axis)) * along(scale, q, axis)


def round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass (straight-through)."""
    return (x.round() - x).detach() + x


def fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Quantize then dequantize, differentiable in ``x`` and ``scale`` through a straight-through rounding.

    The forward value is ``dequantize(quantize(x))`` bit for bit: ``round_ste`` computes
    ``(round(y) - y) + y``, and both steps are exact in floating point for ``|round(y) - y| <= 1/2``.
    """
    scale, zero_point = along(scale, x, axis), along(zero_point, x, axis)
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


class _FrozenFakeQuantize(torch.autograd.Function):
    """``dequantize(quantize(x))``; backward: the gradient where ``x`` was not clamped, none to the parameters."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        integers = _unclamped_integers(x, scale, zero_point)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward((integers >= qmin) & (integers <= qmax))
        return integers.clamp_(qmin, qmax).sub_(zero_point).mul_(scale)  # dequantize, in place on its own tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.needs_input_grad[0]:  # only a parameter asked, and a frozen one gets nothing
            return None, None, None, None, None
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize_frozen(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """What a frozen quantizer computes: ``dequantize(quantize(x))``, with a straight-through gradient for ``x``.

    The gradient passes unchanged where ``round(x / s) + z`` lies in ``[qmin, qmax]`` and is zero
    where it was clamped -- the gradient of PyTorch's fused fake-quantization kernels -- and the
    frozen ``scale`` and ``zero_point`` get none. Unlike ``fake_quantize`` it keeps one boolean per
    value for the backward pass instead of the graph of five operations.
    """
    scale, zero_point = along(scale, x, axis), along(zero_point, x, axis)
    return _FrozenFakeQuantize.apply(x, scale, zero_point, qmin, qmax)


def storage_bits(bits: int) -> int:
    """Bits per stored integer: packed 2 and 4 bits, a byte up to 8, two bytes up to 16."""
    check_bits(bits)
    if bits in (2, 4):
        return bits
    return 8 if bits <= 8 else 16


def pack(q: Tensor, bits: int, qmin: int) -> Tensor:
    """Store integers ``q`` (``qmin <= q < qmin + 2^bits``) compactly, flattened.

    2- and 4-bit values are offset to unsigned and packed ``8 / bits`` per byte; other widths are
    stored in int8 or int16. ``unpack`` inverts it.
    """
    flat = q.flatten().to(torch.int32)
    width = storage_bits(bits)
    if width in (8, 16):  # unsigned grids are shifted to fit the signed storage type
        shift = 2 ** (width - 1) if qmin >= 0 else 0
        return (flat - shift).to(torch.int8 if width == 8 else torch.int16)
    per_byte = 8 // width
    offset = flat - qmin
    padded = torch.nn.functional.pad(offset, (0, (-len(offset)) % per_byte)).reshape(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=q.device) * width
    return (padded << shifts).sum(dim=1).to(torch.uint8)


def unpack(packed: Tensor, bits: int, qmin: int, numel: int) -> Tensor:
    """The flat int32 integers that ``pack(q, bits, qmin)`` stored (``numel`` of them)."""
    width = storage_bits(bits)
    if width in (8, 16):
        return packed.to(torch.int32) + (2 ** (width - 1) if qmin >= 0 else 0)
    per_byte = 8 // width
    shifts = torch.arange(per_byte, dtype=torch.int32, device=packed.device) * width
    values = (packed.to(torch.int32)[:, None] >> shifts) & (2**width - 1)
    return values.flatten()[:numel] + qmin
