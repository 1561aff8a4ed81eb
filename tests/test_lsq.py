"""The learned-step quantizer QAT and reconstruction share: LSQ's gradients, bf16, and a scale that learns."""

import math

import pytest
import torch

from qexp.quant.core.affine import fake_quantize
from qexp.quant.core.lsq import LearnedStepQuantizer, gradient_factor, masked_choice
from qexp.quant.core.modules import FakeQuantize, Mode
from qexp.quant.core.observers import OBSERVERS


def frozen_quantizer(scale: float, zero_point: float) -> FakeQuantize:
    quantizer = FakeQuantize(OBSERVERS["minmax"](2, symmetric=False))  # the grid [0, 3]
    quantizer.scale.fill_(scale)
    quantizer.zero_point.fill_(zero_point)
    quantizer.mode = Mode.QUANTIZE
    return quantizer


def test_lsq_gradients_are_straight_through_with_the_lsq_scale():
    stand_in = LearnedStepQuantizer(frozen_quantizer(0.5, 1.0), per_image=True)
    x = torch.tensor([[-2.0, 0.2, 0.7, 3.0]], requires_grad=True)  # below the grid, two inside, above it
    out = stand_in(x)
    assert out.tolist() == [[-0.5, 0.0, 0.5, 1.0]]  # (clamp(round(x / s) + z, 0, 3) - z) * s
    out.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]  # straight through inside the range, nothing where clamped
    # d/ds: qmin - z below, round(x/s) - x/s inside, qmax - z above; times g = 1 / sqrt(4 values * qmax 3)
    expected = ((0 - 1) + (0 - 0.4) + (1 - 1.4) + (3 - 1)) / math.sqrt(4 * 3)
    assert stand_in.scale.grad.item() == pytest.approx(expected)
    unscaled = LearnedStepQuantizer(frozen_quantizer(0.5, 1.0), per_image=True, gradient_scale=False)
    assert torch.equal(unscaled(x), out)
    unscaled(x).sum().backward()
    assert unscaled.scale.grad.item() == pytest.approx(expected * math.sqrt(4 * 3))  # the same gradient, not scaled


def test_lsq_output_matches_the_frozen_quantizer_under_bf16_autocast():
    quantizer = frozen_quantizer(0.05, 0.0)
    stand_in = LearnedStepQuantizer(quantizer, per_image=True)
    x = torch.rand(4, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stand_in(x)
    assert out.dtype == torch.float32  # the quantizer computes in float32 whatever autocast does
    assert torch.equal(out, quantizer(x.float()))


def fit_scale(gradient_scale: bool, steps: int = 40) -> tuple[list[float], LearnedStepQuantizer]:
    """Adam on the step size of a 2-bit minmax grid over half-normal activations; the error at each step."""
    x = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(0)).abs()
    quantizer = FakeQuantize(OBSERVERS["minmax"](2, symmetric=False))
    quantizer.mode = Mode.OBSERVE
    quantizer(x)
    quantizer.freeze()
    quantizer.mode = Mode.QUANTIZE
    stand_in = LearnedStepQuantizer(quantizer, per_image=True, gradient_scale=gradient_scale)
    optimizer = torch.optim.Adam(stand_in.parameters(), lr=2e-2)
    errors = []
    for _ in range(steps):
        error = (stand_in(x) - x).pow(2).mean()
        errors.append(error.item())
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
    return errors, stand_in


@pytest.mark.parametrize("gradient_scale", [True, False])
def test_a_few_steps_on_the_step_size_lower_the_quantization_error_and_write_it_back(gradient_scale):
    errors, stand_in = fit_scale(gradient_scale)
    assert errors[-1] < 0.5 * errors[0]  # minmax keeps the rare large values; the learned step clips them
    before = stand_in._frozen[0].scale.clone()
    quantizer = stand_in.write_back()
    assert quantizer.scale < before and torch.equal(quantizer.scale, stand_in.scale.detach())


def test_adam_follows_the_same_path_with_or_without_the_gradient_scale():
    """Why reconstruction may leave LSQ's gradient scale out: Adam divides a constant factor out."""
    (with_scale, a), (without, b) = fit_scale(True), fit_scale(False)
    assert gradient_factor(4 * 6 * 6, 3) == pytest.approx(1 / math.sqrt(144 * 3))
    torch.testing.assert_close(a.scale, b.scale, rtol=1e-5, atol=0)
    assert with_scale == pytest.approx(without, rel=1e-5)


@pytest.mark.parametrize("axis", [None, 0])
def test_the_fused_quantizer_gives_autograds_values_and_gradients_with_and_without_qdrops_mask(axis):
    """The one-pass forward/backward against ``fake_quantize`` differentiated by autograd, mask by ``where``."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 5, 4, 4, generator=generator) * 2).requires_grad_(True)
    shape = None if axis is None else x.shape
    quantizer = FakeQuantize(OBSERVERS["minmax"](3, symmetric=axis is not None, axis=axis, shape=shape))
    quantizer.mode = Mode.OBSERVE
    quantizer(x.detach() * 0.6)  # a range narrower than x's, so some values are clamped
    quantizer.freeze()
    quantizer.mode = Mode.QUANTIZE
    keep = (torch.rand(x.shape, generator=generator) < 0.5).float()  # QDrop's masks are 0/1 floats
    upstream = torch.randn(x.shape, generator=generator)
    for mask in (None, keep):
        stand_in = LearnedStepQuantizer(quantizer, per_image=axis is None, gradient_scale=False)
        (stand_in(x, keep=mask) * upstream).sum().backward()
        fused = x.grad.clone(), stand_in.scale.grad.clone()
        x.grad = None
        scale = stand_in.scale.detach().clone().requires_grad_(True)
        expected = fake_quantize(x, scale, quantizer.zero_point, quantizer.qmin, quantizer.qmax, axis)
        if mask is not None:
            expected = torch.where(mask.bool(), x, expected)
        assert torch.equal(stand_in(x.detach(), keep=mask), expected.detach())  # the same values, bit for bit
        (expected * upstream).sum().backward()
        torch.testing.assert_close(fused[0], x.grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fused[1], scale.grad, rtol=1e-5, atol=1e-5)
        assert fused[1].abs().min() > 0  # every scale received a gradient
        x.grad = None


def test_a_value_exactly_on_an_end_of_the_grid_is_treated_as_clamped():
    """Our convention, whatever torch's clamp does: the gradient passes strictly inside the grid only."""
    stand_in = LearnedStepQuantizer(frozen_quantizer(0.5, 1.0), per_image=True, gradient_scale=False)  # levels -0.5..1
    x = torch.tensor([[-0.5, 0.0, 0.5, 1.0]], requires_grad=True)  # on qmin, inside, inside, on qmax
    stand_in(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert stand_in.scale.grad.item() == pytest.approx((0 - 1) + 0 + 0 + (3 - 1))  # q - z at both ends


def test_masked_choice_is_where_for_a_float_mask():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 8, 8, generator=generator).unbind()
    mask = (torch.rand(a.shape, generator=generator) < 0.3).float()
    assert torch.equal(masked_choice(mask, a, b), torch.where(mask.bool(), a, b))
