"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

Inside a residual block, ``conv2(relu(conv1(x)))`` is unchanged when output channel ``i`` of
``conv1`` (weight and bias) is divided by ``s_i > 0`` and input channel ``i`` of ``conv2`` is
multiplied by it, because ``relu(x / s) = relu(x) / s``. Choosing ``s_i = sqrt(r1_i / r2_i)``,
with ``r1_i`` the range of ``conv1``'s output channel ``i`` and ``r2_i`` that of ``conv2``'s input
channel ``i``, makes both ranges ``sqrt(r1_i r2_i)``: channels with a tiny range no longer waste a
per-tensor grid sized for the largest one. It must run on the BatchNorm-folded model (the
scaling has to reach the bias) and before any observer sees a weight. With per-channel weight
grids ``conv1`` gains nothing, ``conv2`` still does. The pairs are the consecutive convolutions
on each residual block's branch (``find_patterns``) with nothing but ReLU between them -- and the
Identity that folding leaves where a BatchNorm was.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qexp.quant.core.patterns import find_patterns


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


def branch_pairs(branch: Sequence[nn.Module]) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
    """The consecutive convolutions of a block's ``branch`` with only ReLU or Identity between them.

    Those are the pairs ``relu(x / s) = relu(x) / s`` lets equalization rescale. A BatchNorm
    between two convolutions would not pass the scaling on, so it is refused.
    """
    convs = [index for index, module in enumerate(branch) if isinstance(module, nn.Conv2d)]
    pairs = []
    for first, second in itertools.pairwise(convs):
        between = branch[first + 1 : second]
        if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in between):
            raise ValueError("cross-layer equalization needs a BatchNorm-folded model (fold_batchnorm first).")
        if all(isinstance(module, nn.ReLU | nn.Identity) for module in between):
            pairs.append((branch[first], branch[second]))
    return pairs


def equalize_blocks(model: nn.Module) -> int:
    """Equalize every conv -> ReLU -> conv pair on a residual branch of a BN-folded ``model``; return how many."""
    modules = dict(model.named_modules())
    branches = [[modules[name] for name in block.branch] for block in find_patterns(model).blocks]
    pairs = [pair for branch in branches for pair in branch_pairs(branch)]
    for first, second in pairs:
        equalize_pair(first, second)
    return len(pairs)
