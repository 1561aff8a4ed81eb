import math

import pytest
import torch
from torch import nn

from qexp.cells.evaluate import sqnr_db, top1, top1_with_error
from qexp.data import Split


def test_sqnr():
    reference = torch.tensor([1.0, 1.0])
    assert sqnr_db(reference, reference) == math.inf
    assert sqnr_db(reference, torch.tensor([1.0, 0.0])) == pytest.approx(10 * math.log10(2))


def test_top1_with_error_is_top1_and_its_binomial_standard_error():
    model = nn.Linear(3 * 32 * 32, 10)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = Split(images, torch.arange(50) % 10)
    value, error = top1_with_error(model, split, flatten, batch_size=16)
    assert value == top1(model, split, flatten) and 0 < value < 100  # a value with a non-zero error
    assert error == pytest.approx(100 * math.sqrt((value / 100) * (1 - value / 100) / 50))


def flatten(images: torch.Tensor) -> torch.Tensor:
    return images.float().flatten(1) / 255
