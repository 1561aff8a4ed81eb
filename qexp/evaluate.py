"""Top-1 accuracy of a model on a uint8 split, in float32 and without autograd."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from qexp.data import Split


@torch.no_grad()
def top1(model: nn.Module, split: Split, transform: Callable[[Tensor], Tensor], batch_size: int = 1000) -> float:
    """Percentage of ``split`` that ``model`` classifies correctly; ``transform`` turns uint8 into inputs."""
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        images = transform(split.images[start : start + batch_size])
        logits = model(images)
        correct += int((logits.argmax(dim=1) == split.labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(split)
