"""The CIFAR ResNet20 of He et al. (2016), section 4.2.

Three stages of three basic blocks with 16, 32 and 64 channels; when a stage halves the
resolution the shortcut is option A (subsample and zero-pad the channels, no parameters), which
keeps the model at 0.27 M parameters. Every operation that quantization has to reach is a module
of its own -- each ReLU, each residual ``add``, the pooling -- so a quantizer can be attached to it
by module swap or forward hook instead of by rewriting ``forward``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Add(nn.Module):
    """``a + b`` as a module, so the residual sum has a place for an activation quantizer."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class PadShortcut(nn.Module):
    """Option-A shortcut: take every second pixel and zero-pad the new channels."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, self.extra_channels - pad))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}"


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = (
            PadShortcut(out_channels - in_channels) if stride != 1 or in_channels != out_channels else nn.Identity()
        )
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, self.shortcut(x)))


class ResNet(nn.Module):
    """CIFAR ResNet with ``6n + 2`` layers; ``blocks_per_stage=3`` gives ResNet20."""

    def __init__(
        self,
        blocks_per_stage: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        in_channels = widths[0]
        for index, width in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # No zero-init of each block's last BatchNorm (Goyal et al. 2017's trick, made for projection
        # shortcuts): behind option A's zero-padded shortcut it makes the new channels' pre-activation
        # exactly 0, ReLU passes no gradient at 0, and those channels never learn -- the residual
        # stream would stay 16 channels wide in every stage.

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(num_classes: int = 10) -> ResNet:
    """ResNet20 for 32x32 inputs: 19 convolutions, 1 linear layer, 0.27 M parameters."""
    return ResNet(blocks_per_stage=3, num_classes=num_classes)


def dead_residual_channels(model: nn.Module) -> dict[str, list[int]]:
    """Per block, the output channels whose residual branch is cut off: ``bn2`` scale exactly 0.

    Such a channel adds nothing but a constant to the residual stream whatever the input, and behind
    an option-A shortcut, which brings exact zeros into the new channels, it never receives a
    gradient, so training cannot revive it. A trained network where this holds in many channels is
    narrower than it looks (the zero-initialised ``bn2`` of older qexp runs left 16 live channels
    in every stage). Blocks without dead channels are left out of the answer.
    """
    dead = {}
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            channels = (module.bn2.weight.detach() == 0).nonzero().flatten().tolist()
            if channels:
                dead[name] = channels
    return dead


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["Add", "BasicBlock", "PadShortcut", "ResNet", "count_parameters", "dead_residual_channels", "resnet20"]
