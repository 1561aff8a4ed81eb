"""Checks on the shipped checkpoint and the JPEG mirror: slow and data-hungry, skipped by ``make test``.

python -m pytest -m slow
"""

from pathlib import Path

import pytest

from qexp.cells.weights import SHIPPED, load_weights
from qexp.quantize import run

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
    # training tests in its own precision (bf16 on some CPUs) and records the fp32 figure beside it
    assert abs(result["top1"] - meta.get("test_top1_fp32", meta["test_top1"])) < 0.05


@pytest.mark.parametrize(("quant", "tolerance"), [("custom_ptq", 0.5), ("torch_ptq", 1.0)])
def test_eight_bits_stays_close_to_fp32(compose_in, quant, tolerance):
    result = run(compose_in("quantize", [f"quant={quant}", "bits=8", "observer=mse"]))
    assert result["status"] == "ok" and result["fp32_top1"] - result["top1"] < tolerance


def test_no_block_of_the_shipped_network_has_an_output_channel_that_is_always_zero():
    """On a batch of real test images, every channel of every block's residual branch (``bn2``'s output) varies."""
    import torch

    from qexp.data import CIFAR10DataModule, normalize
    from qexp.models import resnet20
    from qexp.models.resnet import BasicBlock

    model = resnet20()
    load_weights(SHIPPED, model, "resnet20")
    datamodule = CIFAR10DataModule(source="cifar10_folder", root=str(MIRROR), val_size=0)
    datamodule.setup()
    outputs = {}
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            module.bn2.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
    with torch.no_grad():
        model.eval()(normalize(datamodule.splits["test"].images[:256]))
    for name, out in outputs.items():
        constant = (out.amax(dim=(0, 2, 3)) == out.amin(dim=(0, 2, 3))).nonzero().flatten().tolist()
        assert constant == [], f"{name}: residual channels {constant} are constant on real images"
