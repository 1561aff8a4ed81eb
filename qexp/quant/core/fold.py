"""BatchNorm folding: merge each BatchNorm that directly follows a convolution into that convolution.

At inference a BatchNorm is the per-channel affine map ``y = gamma (x - mean) / sqrt(var + eps) +
beta``; applied to a convolution's output it equals a convolution with weight
``W * gamma / sqrt(var + eps)`` (per output channel) and bias ``(b - mean) gamma / sqrt(var + eps)
+ beta``. Quantizing the folded weight is what an integer kernel executes, so weight statistics
must be taken after folding -- a per-tensor range of the unfolded weight can be far off.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from qexp.quant.core.modules import swap_module
from qexp.quant.core.patterns import find_patterns


def fold_conv_bn_weights(
    weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[Tensor, Tensor]:
    """Folded ``(weight, bias)`` of a convolution followed by ``bn`` in eval mode."""
    gamma = torch.ones_like(bn.running_var) if bn.weight is None else bn.weight
    beta = torch.zeros_like(bn.running_mean) if bn.bias is None else bn.bias
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    folded_weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    folded_bias = (bias - bn.running_mean) * factor + beta
    return folded_weight, folded_bias


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every foldable BN merged into its conv and replaced by Identity.

    Foldable: a BN with running statistics that reads only a convolution's output, which nothing
    else reads (``find_patterns``); any other BN is left as it is.
    """
    folded = copy.deepcopy(model).eval()
    modules = dict(folded.named_modules())
    with torch.no_grad():
        for conv_name, bn_name in find_patterns(folded).conv_bn:
            conv, bn = modules[conv_name], modules[bn_name]
            weight, bias = fold_conv_bn_weights(conv.weight, conv.bias, bn)
            conv.weight.copy_(weight)
            conv.bias = nn.Parameter(bias)
            swap_module(folded, bn_name, nn.Identity())
    return folded
