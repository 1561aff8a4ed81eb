"""An integer-arithmetic reference for a quantized convolution, to check the fake-quant maths.

Fake quantization claims to compute what an integer kernel computes. This module computes it
the integer way -- uint8 inputs, int8 weights, an int32 accumulator, a bias at scale
``s_x * s_w``, one requantization to the output grid -- so a test can hold the two side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def integer_conv2d(
    x_q: Tensor,
    x_zero_point: int,
    w_q: Tensor,
    bias_q: Tensor | None,
    stride: int = 1,
    padding: int = 1,
) -> Tensor:
    """int32 accumulator ``sum (x_q - z_x) * w_q + bias_q`` of a conv with symmetric weights.

    ``x_q``: ``N x C x H x W`` integers; ``w_q``: ``O x C x k x k`` integers (zero point 0);
    ``bias_q``: ``O`` integers at scale ``s_x * s_w``. Returns ``N x O x H' x W'`` int32.
    Zero padding of the centred input is padding with the real zero, as in the float conv.
    """
    n, _, h, w = x_q.shape
    out_channels, _, k, _ = w_q.shape
    centred = (x_q.to(torch.int32) - x_zero_point).to(torch.float64)  # exact for |values| < 2^53
    columns = F.unfold(centred, k, padding=padding, stride=stride).round().to(torch.int64)
    accumulator = w_q.reshape(out_channels, -1).to(torch.int64) @ columns  # N x O x L
    if bias_q is not None:
        accumulator = accumulator + bias_q.to(torch.int64)[None, :, None]
    if accumulator.abs().max() >= 2**31:
        raise OverflowError("the accumulator left the int32 range")
    out_h = (h + 2 * padding - k) // stride + 1
    out_w = (w + 2 * padding - k) // stride + 1
    return accumulator.to(torch.int32).reshape(n, out_channels, out_h, out_w)


def requantize(accumulator: Tensor, multiplier: Tensor, zero_point: int, qmin: int, qmax: int) -> Tensor:
    """Output integers ``clamp(round(acc * M) + z, qmin, qmax)`` with ``M = s_x s_w / s_out`` per channel."""
    scaled = accumulator.to(torch.float64) * multiplier.to(torch.float64).reshape(1, -1, 1, 1)
    return torch.clamp(torch.round(scaled) + zero_point, qmin, qmax).to(torch.int32)
