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
        kept = stand_in(x - 1) == x - 1  # -1 is off the grid: kept where dropped
        return [qdrop_mask(x, 0.5, generator).bool(), kept]

    first, again, other = masks(0), masks(0), masks(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0], first[1])  # the stream moves on
    assert first[0].device.type == device and 0.4 < float(first[0].float().mean()) < 0.6


def test_a_drop_that_is_a_multiple_of_1_256_compares_the_low_seven_bytes_of_each_drawn_integer():
    like = torch.empty(3, 5, 7)  # 105 values: 15 integers
    mask = qdrop_mask(like, 0.25, torch.Generator().manual_seed(3))
    words = torch.empty(15, dtype=torch.int64).random_(generator=torch.Generator().manual_seed(3))
    low_bytes = torch.stack([(words >> (8 * k)) & 255 for k in range(7)], dim=1).flatten()  # no byte order involved
    assert torch.equal(mask, (low_bytes < 64).float().view(like.shape))


@pytest.mark.parametrize("drop", [0.5, 0.125, 0.3])
def test_qdrop_masks_keep_the_asked_share_of_values_float(drop):
    """The byte path (multiples of 1/256) and the uniform path: a share within four standard errors of ``drop``."""
    mask = qdrop_mask(torch.empty(64, 32, 16, 16), drop, torch.Generator().manual_seed(0))
    share, error = float(mask.mean()), (drop * (1 - drop) / mask.numel()) ** 0.5
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(share - drop) < 4 * error
    if drop * 256 == int(drop * 256):  # value i comes from byte i % 7 of a drawn integer: each position as random
        positions = mask.flatten()[: mask.numel() // 7 * 7].view(-1, 7)
        assert (positions.mean(0) - drop).abs().max() < 5 * (drop * (1 - drop) / len(positions)) ** 0.5


@pytest.mark.parametrize("drop", [1.0, -0.1])
def test_a_drop_that_is_not_a_probability_below_one_is_refused(drop):
    with pytest.raises(ValueError, match=f"drop={drop!r}"):
        qdrop_mask(torch.empty(4), drop, torch.Generator())
