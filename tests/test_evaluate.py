import math

import pytest
import torch

from qexp.evaluate import sqnr_db


def test_sqnr():
    reference = torch.tensor([1.0, 1.0])
    assert sqnr_db(reference, reference) == math.inf
    assert sqnr_db(reference, torch.tensor([1.0, 0.0])) == pytest.approx(10 * math.log10(2))
