"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

Inside a residual block, ``conv2(relu(conv1(x)))`` is unchanged when output channel ``i`` of
``conv1`` (weight and bias) is divided by ``s_i > 0`` and input channel ``i`` of ``conv2`` is
multiplied by it, because ``relu(x / s) = relu(x) / s``. Choosing ``s_i = sqrt(r1_i / r2_i)``,
with ``r1_i`` the range of ``conv1``'s output channel ``i`` and ``r2_i`` that of ``conv2``'s input
channel ``i``, makes both ranges ``sqrt(r1_i r2_i)``: channels with a tiny range no longer waste a
per-tensor grid sized for the largest one. It must run on the BatchNorm-folded model (the
scaling has to reach the bias) and before any observer sees a weight. With per-channel weight
grids ``conv1`` gains nothing, ``conv2`` still does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qexp.models.resnet import BasicBlock


def equalization_scales(first: Tensor, second: Tensor) -> Tensor:
    """``s_i = sqrt(r1_i / r2_i)`` for the output channels of ``first`` and the input channels of ``second``.

    A channel that is all zero in either layer keeps ``s_i = 1``: there is nothing to balance.
    """
    r1 = first.abs().flatten(1).amax(dim=1)
    r2 = second.abs().transpose(0, 1).flatten(1).amax(dim=1)
    scales = torch.sqrt(r1 / r2)
    return torch.where((r1 > 0) & (r2 > 0), scales, torch.ones_like(scales))


@torch.no_grad()
def equalize_pair(first: nn.Conv2d, second: nn.Conv2d) -> Tensor:
    """Rescale ``first``'s output channels and ``second``'s input channels in place; return the scales."""
    scales = equalization_scales(first.weight, second.weight)
    first.weight.div_(scales.reshape(-1, 1, 1, 1))
    if first.bias is not None:
        first.bias.div_(scales)
    second.weight.mul_(scales.reshape(1, -1, 1, 1))
    return scales


def equalize_blocks(model: nn.Module) -> int:
    """Equalize ``conv1 -> relu -> conv2`` in every basic block of a BN-folded ``model``; return how many."""
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    for block in blocks:
        if not isinstance(block.bn1, nn.Identity):
            raise ValueError("cross-layer equalization needs a BatchNorm-folded model (fold_batchnorm first).")
        equalize_pair(block.conv1, block.conv2)
    return len(blocks)
