"""Top-1 accuracy of a model on a uint8 split, in float32 and without autograd."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from qexp.data import Split


@torch.no_grad()
def predict(model: nn.Module, split: Split, transform: Callable[[Tensor], Tensor], batch_size: int = 1000) -> Tensor:
    """The logits of ``model`` for every image of ``split``; ``transform`` turns uint8 into inputs."""
    model.eval()
    return torch.cat(
        [model(transform(split.images[start : start + batch_size])) for start in range(0, len(split), batch_size)]
    )


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Percentage of rows of ``logits`` whose largest entry is at the label."""
    return 100.0 * int((logits.argmax(dim=1) == labels).sum()) / len(labels)


def top1(model: nn.Module, split: Split, transform: Callable[[Tensor], Tensor], batch_size: int = 1000) -> float:
    """Percentage of ``split`` that ``model`` classifies correctly."""
    return accuracy(predict(model, split, transform, batch_size), split.labels)
