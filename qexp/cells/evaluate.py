"""Top-1 accuracy of a model on a uint8 split, in float32 and without autograd; how far logits moved.

``Predictions`` is the one scoring of a model's logits on a split (top-1, its standard error, which
images were right, agreement with another model) and ``classify`` the one way a torch model's logits
are computed: every top-1 a cell records -- the float and quantized models, pt2e's reference graph,
ONNX Runtime's graph (whose logits the runtime computes) -- is counted by the same code.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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


@dataclass(frozen=True, eq=False)
class Predictions:
    """A model's ``logits`` (``N x classes``) on the ``N`` images of a split with these ``labels``; their figures."""

    logits: Tensor
    labels: Tensor

    @property
    def images(self) -> int:
        return len(self.labels)

    @property
    def top1(self) -> float:
        """Percentage of the images classified correctly."""
        return accuracy(self.logits, self.labels)

    @property
    def stderr(self) -> float:
        """One binomial ``standard_error`` of ``top1``, in points."""
        return standard_error(self.top1, self.images)

    def correct(self) -> str:
        """Which images were right, ``pack_correct``ed: two cells can be compared image by image."""
        return pack_correct(self.logits.argmax(dim=1) == self.labels)

    def agreement(self, other: Predictions) -> float:
        """Percentage of the images these logits classify as ``other``'s do (``other``'s classes as labels)."""
        return accuracy(self.logits, other.logits.argmax(dim=1))

    def max_difference(self, other: Predictions) -> float:
        """The largest absolute difference between these logits and ``other``'s."""
        return float((self.logits - other.logits).abs().max())


def classify(
    model: nn.Module, split: Split, transform: Callable[[Tensor], Tensor], batch_size: int = 1000
) -> Predictions:
    """``model``'s ``Predictions`` on ``split`` (``predict``'s logits beside the labels)."""
    return Predictions(predict(model, split, transform, batch_size), split.labels)


def top1(model: nn.Module, split: Split, transform: Callable[[Tensor], Tensor], batch_size: int = 1000) -> float:
    """Percentage of ``split`` that ``model`` classifies correctly."""
    return classify(model, split, transform, batch_size).top1


def flip_averaged_top1(
    model: nn.Module, split: Split, transform: Callable[[Tensor], Tensor], batch_size: int = 1000
) -> float:
    """Top-1 of the logits averaged over each image and its left-right mirror (test-time augmentation)."""
    logits = predict(model, split, transform, batch_size)
    mirrored = predict(model, Split(split.images.flip(-1), split.labels), transform, batch_size)
    return accuracy(logits + mirrored, split.labels)


def standard_error(top1_percent: float, images: int) -> float:
    """One binomial standard error of a top-1 percentage measured on ``images`` images, in points."""
    p = top1_percent / 100
    return 100 * math.sqrt(p * (1 - p) / images)


def top1_with_error(
    model: nn.Module, split: Split, transform: Callable[[Tensor], Tensor], batch_size: int = 1000
) -> tuple[float, float]:
    """``top1`` and its ``standard_error``: for a small test set (the 1 017 original images) the error matters."""
    predictions = classify(model, split, transform, batch_size)
    return predictions.top1, predictions.stderr


def pack_correct(correct: Tensor) -> str:
    """Per-image correctness (bool, one per test image) as base64 of its bits, 1 668 characters for 10 000 images.

    Two cells measured on the same images are compared image by image (McNemar's test in the
    report); this keeps that possible from ``result.json`` alone. ``unpack_correct`` reverses it.
    """
    return base64.b64encode(np.packbits(correct.cpu().numpy().astype(bool), bitorder="little").tobytes()).decode()


def unpack_correct(text: str, images: int) -> np.ndarray:
    """The bool array of ``images`` entries that ``pack_correct`` encoded as ``text``."""
    packed = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    if len(packed) != (images + 7) // 8:
        raise ValueError(f"test_correct holds {len(packed)} bytes; expected {(images + 7) // 8} for {images} images.")
    return np.unpackbits(packed, count=images, bitorder="little").astype(bool)


def sqnr_db(reference: Tensor, approximation: Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approximation`` in dB; ``inf`` when it is exact."""
    reference, approximation = reference.detach(), approximation.detach()
    return decibels(float(reference.pow(2).sum()), float((reference - approximation).pow(2).sum()))


def decibels(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``, ``inf`` for no noise: the SQNR of energies summed, e.g. batch by batch."""
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
