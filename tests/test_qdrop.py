"""QDrop's random drop: masks that repeat with their seed, on the tensors' device, around one quantizer."""

import pytest
import torch

from qexp.quant.core.lsq import LearnedStepQuantizer, select
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
        kept = stand_in(x - 1) == x - 1  # -1 is off the grid: kept where dropped
        return [qdrop_mask(x, 0.5, generator).bool(), kept]

    first, again, other = masks(0), masks(0), masks(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0], first[1])  # the stream moves on
    assert first[0].device.type == device and 0.4 < float(first[0].float().mean()) < 0.6


def test_select_is_where_for_a_float_mask_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 8, 8, generator=generator).unbind()
    mask = qdrop_mask(a, 0.3, generator)
    assert mask.dtype == a.dtype and set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(select(mask, a, b), torch.where(mask.bool(), a, b))


@pytest.mark.parametrize("drop", [0.5, 0.125, 0.3])
def test_qdrop_masks_keep_the_asked_share_of_values_float(drop):
    """The byte path (multiples of 1/256) and the uniform path: a share within four standard errors of ``drop``."""
    mask = qdrop_mask(torch.empty(64, 32, 16, 16), drop, torch.Generator().manual_seed(0))
    share, error = float(mask.mean()), (drop * (1 - drop) / mask.numel()) ** 0.5
    assert abs(share - drop) < 4 * error
    # value i comes from byte i % 7 of a drawn integer: each of the seven byte positions is as random
    positions = mask.flatten()[: mask.numel() // 7 * 7].view(-1, 7)
    assert (positions.mean(0) - drop).abs().max() < 5 * (drop * (1 - drop) / len(positions)) ** 0.5
