"""AdaRound's learned rounding (Nagel et al. 2020): round each weight down or up, whichever serves the output.

Round-to-nearest picks each weight's integer on its own, but what the network needs is a good
*output*, and at 2 to 4 bits rounding some weights the other way can cancel the errors of
others. AdaRound keeps the grid of round-to-nearest (scale and zero point as calibrated) and
learns, for every weight, only whether to round down or up::

    q = clamp(floor(w / s) + h(v) + z, qmin, qmax),   x_hat = (q - z) * s

with a continuous ``h(v)`` in ``[0, 1]`` while fitting and ``h = 1[v >= 0]`` afterwards. What the
pieces compute:

* ``rectified_sigmoid``: ``h(v) = clamp(sigmoid(v) (zeta - gamma) + gamma, 0, 1)`` with
  ``zeta = 1.1``, ``gamma = -0.1``; stretched beyond ``[0, 1]`` and clipped, so that ``h`` reaches
  0 and 1 exactly at finite ``v`` and its gradient does not vanish on the way there;
* ``initial_logits``: the ``v`` with ``h(v) = w / s - floor(w / s)``, so that fitting starts at the
  real (unrounded) weight;
* ``rounding_regularizer``: ``sum(1 - |2 h - 1|^beta)``, zero when every ``h`` is 0 or 1 and
  largest at 1/2; added to the output error with a weight ``lambda``, it pushes every ``h`` to a
  decision, so that making the rounding hard at the end changes little;
* ``annealed_beta``: ``beta`` from 20 to 2 after a warm-up without the regulariser; a large
  ``beta`` leaves most ``h`` free and a small one pulls them all to 0 or 1, so decisions are made
  late, after the output error has shaped them;
* ``AdaRoundWeight``: stands in for a frozen weight quantizer while the rounding is learned; its
  trainable parameters are the logits ``v``, one per weight.

What is fitted, and on which output, is ``reconstruct.py``'s business.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qexp.quant.core.affine import along
from qexp.quant.core.modules import FakeQuantize

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(logits: Tensor) -> Tensor:
    """AdaRound's ``h(v)``, shaped like ``logits``: a sigmoid stretched to ``(gamma, zeta)``, clipped to ``[0, 1]``."""
    return torch.clamp(torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA, 0, 1)


def initial_logits(remainder: Tensor) -> Tensor:
    """The ``v`` with ``h(v) = remainder`` (``0 <= remainder < 1``): training starts at the real weight."""
    return -torch.log((ZETA - GAMMA) / (remainder - GAMMA) - 1)


def rounding_regularizer(h: Tensor, beta: float) -> Tensor:
    """``sum(1 - |2 h - 1|^beta)``, a scalar: zero when every ``h`` is 0 or 1, largest at 1/2."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def annealed_beta(step: int, steps: int, warmup: float, start: float = 20.0, end: float = 2.0) -> float | None:
    """``beta`` at ``step``: None during the warm-up (no regularisation yet), then linear from ``start`` to ``end``."""
    begin = warmup * steps
    if step < begin:
        return None
    return start + (end - start) * (step - begin) / max(steps - begin, 1)


class AdaRoundWeight(nn.Module):
    """Stands in for a frozen weight quantizer while the rounding of that weight is learned.

    ``rounding()`` is ``h(v)`` while fitting and the hard 0/1 decision once ``hard`` is set;
    ``forward`` returns the weight on the quantizer's grid with that rounding.
    """

    def __init__(self, quantizer: FakeQuantize, weight: Tensor) -> None:
        super().__init__()
        axis = quantizer.observer.axis
        self.qmin, self.qmax = quantizer.qmin, quantizer.qmax
        self.register_buffer("scale", along(quantizer.scale, weight, axis).detach())
        self.register_buffer("zero_point", along(quantizer.zero_point, weight, axis).detach())
        scaled = weight.detach() / self.scale
        self.register_buffer("floor", scaled.floor())
        self.logits = nn.Parameter(initial_logits(scaled - self.floor))
        self.hard = False

    def rounding(self) -> Tensor:
        return (self.logits >= 0).float() if self.hard else rectified_sigmoid(self.logits)

    def forward(self, weight: Tensor) -> Tensor:  # the weight itself is fixed: only the rounding changes
        q = torch.clamp(self.floor + self.rounding() + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale
