"""AdaRound's rounding: the rectified sigmoid, its regulariser and annealing, the weight stand-in."""

import pytest
import torch

from qexp.quant.core.modules import FakeQuantize, Mode
from qexp.quant.core.observers import OBSERVERS
from qexp.quant.custom.adaround import (
    AdaRoundWeight,
    annealed_beta,
    initial_logits,
    rectified_sigmoid,
    rounding_regularizer,
)


def test_adaround_helpers():
    remainder = torch.tensor([0.0, 0.25, 0.5, 0.9])
    torch.testing.assert_close(rectified_sigmoid(initial_logits(remainder)), remainder)
    h = torch.tensor([0.0, 1.0, 0.5])
    assert float(rounding_regularizer(h, 2.0)) == pytest.approx(1.0)
    assert annealed_beta(10, 100, 0.2) is None
    assert annealed_beta(20, 100, 0.2) == 20.0 and annealed_beta(100, 100, 0.2) == pytest.approx(2.0)


def test_the_stand_in_starts_at_the_real_weight_and_ends_on_a_neighbouring_level():
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    quantizer = FakeQuantize(OBSERVERS["minmax"](4, symmetric=True, axis=0, shape=weight.shape))
    quantizer.mode = Mode.OBSERVE
    quantizer(weight)
    quantizer.freeze()
    adaround = AdaRoundWeight(quantizer, weight)
    torch.testing.assert_close(adaround(weight), weight)  # minmax: no weight is clipped
    adaround.hard = True
    levels = adaround(weight) / adaround.scale
    torch.testing.assert_close(levels, levels.round(), atol=1e-5, rtol=0)  # on the grid
    assert torch.all((levels.round() == adaround.floor) | (levels.round() == adaround.floor + 1))
