import math

import pandas as pd
import pytest
import torch

from qexp.cells.evaluate import pack_correct, unpack_correct
from qexp.report.noise import Paired, images_measured, mcnemar_p


@pytest.mark.parametrize(
    ("only_first", "only_second", "p"),
    [
        (0, 0, 1.0),  # no discordant image: nothing to tell them apart
        (5, 5, 1.0),
        (0, 6, 2 / 2**6),  # six images, all one way
        (5, 1, 2 * (1 + 6) / 2**6),
        (3, 12, 2 * (1 + 15 + 105 + 455) / 2**15),
    ],
)
def test_exact_mcnemar_p_is_twice_the_binomial_tail(only_first, only_second, p):
    assert mcnemar_p(only_first, only_second) == pytest.approx(p, rel=1e-12)
    assert mcnemar_p(only_second, only_first) == mcnemar_p(only_first, only_second)


def test_mcnemar_holds_for_thousands_of_discordant_images():
    assert mcnemar_p(4000, 4000) == 1.0
    assert 0 < mcnemar_p(2000, 2200) < 0.01  # 200 more of 4200 one way: about 3 standard deviations
    assert mcnemar_p(0, 5000) == 0.0  # 2 / 2**5000 underflows
    with pytest.raises(ValueError, match="image counts must be >= 0; got -1"):
        mcnemar_p(-1, 3)


def test_a_verdict_needs_p_below_five_percent():
    assert Paired(6, 0, mcnemar_p(6, 0)).verdict == "loss"
    assert Paired(0, 6, mcnemar_p(0, 6)).verdict == "gain"
    assert Paired(1, 5, mcnemar_p(1, 5)).verdict == "within noise"


def test_per_image_correctness_survives_packing():
    correct = torch.rand(10_001, generator=torch.Generator().manual_seed(0)) < 0.87
    text = pack_correct(correct)
    assert len(text) == 4 * math.ceil(math.ceil(10_001 / 8) / 3)  # base64 of 1 251 bytes
    assert (unpack_correct(text, 10_001) == correct.numpy()).all()
    with pytest.raises(ValueError, match="test_correct holds 1251 bytes; expected 1250 for 10000 images"):
        unpack_correct(text, 10_000)


def test_the_number_of_test_images_is_recorded_or_read_off_the_top1_values():
    old = pd.DataFrame({"status": ["ok", "ok", "failed"], "top1": [86.94, 63.13, None], "fp32_top1": [86.94] * 3})
    assert images_measured(old) == 10_000
    one_image_set = pd.DataFrame({"status": ["ok", "ok"], "top1": [100 * 868 / 1017, 100 * 3 / 1017],
                                  "fp32_top1": [None, None]})  # fmt: skip
    assert images_measured(one_image_set) == 1017
    recorded = old.assign(test_images=[10_000, 10_000, None])
    assert images_measured(recorded) == 10_000
    assert images_measured(old.assign(test_images=[10_000, 1017, None])) is None  # two test sets: no one number
