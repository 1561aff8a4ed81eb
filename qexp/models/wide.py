"""A wide, shallow convolutional network for CIFAR-10: the distillation teacher.

Shaped after airbench94 (Keller Jordan, 2024): a 2x2 stem, then three groups of
``conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU`` at 64/256/256 channels. It has seven
times ResNet20's parameters but eight layers instead of twenty, so on a CPU it trains an epoch in about the
time ResNet20 takes and reaches a higher accuracy in a few dozen epochs: a cheap teacher whose
logits carry more than the labels do. It is never quantized, so nothing here needs to be a module
of its own for a quantizer to reach.
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn


class ConvGroup(nn.Sequential):
    """``conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU``: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


class WideNet(nn.Module):
    """Stem (2x2 conv, 24 channels, no padding: 32 -> 31), three groups (31 -> 15 -> 7 -> 3), max-pool, linear."""

    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), num_classes: int = 10) -> None:
        super().__init__()
        stem_width = 24  # 2 x 3 x 2 x 2: as many channels as a 2x2 RGB patch has values, twice
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, 2, bias=False), nn.BatchNorm2d(stem_width), nn.GELU()
        )  # fmt: skip
        channels = (stem_width, *widths)
        self.groups = nn.Sequential(*(ConvGroup(a, b) for a, b in itertools.pairwise(channels)))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.groups(self.stem(x))).flatten(1))


def widenet(num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256)) -> WideNet:
    """The airbench94-shaped teacher: 64/256/256 channels, about 2.0 M parameters."""
    return WideNet(tuple(widths), num_classes)


__all__ = ["ConvGroup", "WideNet", "widenet"]
