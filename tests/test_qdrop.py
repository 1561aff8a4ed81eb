"""QDrop's random drop: masks that repeat with their seed, on the tensors' device, around one quantizer."""

import pytest
import torch

from qexp.quant.core.lsq import LearnedStepQuantizer
from qexp.quant.custom.ptq import PTQConfig
from qexp.quant.custom.qdrop import QDrop, qdrop_mask

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_qdrop_masks_repeat_with_the_seed_on_the_tensors_device(device):
    x = torch.zeros(4, 8, 6, 6, device=device)

    def masks(seed: int) -> list[torch.Tensor]:
        generator = torch.Generator(device).manual_seed(seed)
        quantizer = PTQConfig(4, 4).make_quantizer(4).to(device)  # unfrozen: scale 1, zero point 0, grid 0..15
        stand_in = QDrop(LearnedStepQuantizer(quantizer, per_image=True), 0.5, generator).train()
        return [qdrop_mask(x, 0.5, generator), stand_in(x - 1) == x - 1]  # -1 is off the grid: kept where dropped

    first, again, other = masks(0), masks(0), masks(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0], first[1])  # the stream moves on
    assert first[0].device.type == device and 0.4 < float(first[0].float().mean()) < 0.6
