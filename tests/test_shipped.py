"""Checks on the shipped checkpoint and the JPEG mirror: slow and data-hungry, skipped by ``make test``.

python -m pytest -m slow
"""

from pathlib import Path

import pytest

from qexp.quantize import run
from qexp.weights import SHIPPED, load_weights

MIRROR = Path(__file__).resolve().parent.parent / "data" / "cifar10-jpeg"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MIRROR / "test").is_dir(), reason="the JPEG mirror is not unpacked in data/cifar10-jpeg"),
    pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped checkpoint"),
]


def test_shipped_checkpoint_scores_what_its_metadata_says(compose_in):
    from qexp.models import resnet20

    meta = load_weights(SHIPPED, resnet20(), "resnet20")
    result = run(compose_in("quantize", ["quant=none"]))
    assert result["status"] == "ok"
    assert abs(result["top1"] - meta["test_top1"]) < 0.05


@pytest.mark.parametrize(("quant", "tolerance"), [("custom_ptq", 0.5), ("torch_ptq", 1.0)])
def test_eight_bits_stays_close_to_fp32(compose_in, quant, tolerance):
    result = run(compose_in("quantize", [f"quant={quant}", "bits=8", "observer=mse"]))
    assert result["status"] == "ok" and result["fp32_top1"] - result["top1"] < tolerance
