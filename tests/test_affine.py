import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qexp.errors import QexpError
from qexp.quant.core.affine import (
    check_bits,
    choose_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_frozen,
    pack,
    quant_range,
    quantize,
    unpack,
)

bits_st = st.integers(2, 16)
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def ranges(draw):
    low, high = sorted((draw(finite), draw(finite)))
    return torch.tensor(low), torch.tensor(high)


def exact_ties(scale: torch.Tensor, count: int, low: int, high: int) -> torch.Tensor:
    """``C x count`` float32 values, row ``c`` exactly halfway between two levels of the grid of step ``scale[c]``.

    Each is ``x = (k + 1/2) * s`` for an integer ``k`` in ``[low, high)`` for which ``x / s`` gives
    ``k + 1/2`` back in float32 (most do), ``count`` of them spread over the range.
    """
    halves = torch.arange(low, high) + 0.5
    values = halves * scale[:, None]
    exact = values / scale[:, None] == halves
    assert (exact.sum(dim=1) >= count).all(), "too few exact ties for this scale"
    picks = [torch.linspace(0, int(tie.sum()) - 1, count).round().long() for tie in exact]
    return torch.stack([row[tie][pick] for row, tie, pick in zip(values, exact, picks, strict=True)])


def reciprocal_rounding(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``round(x * (1 / s))``: how PyTorch's kernels round, and so qexp's simulation before it used ``quantize``."""
    return torch.round(x * (1 / scale))


@settings(max_examples=200, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), bounds=ranges(), data=st.data())
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(bits, symmetric, bounds, data):
    low, high = bounds
    scale, zero_point = choose_qparams(low, high, bits, symmetric)
    qmin, qmax = quant_range(bits, symmetric)
    representable_low = (qmin - zero_point) * scale
    representable_high = (qmax - zero_point) * scale
    x = torch.tensor(data.draw(st.lists(finite, min_size=1, max_size=20)))
    x = x.clamp(max(float(low), float(representable_low)), min(float(high), float(representable_high)))
    error = (fake_quantize(x, scale, zero_point, qmin, qmax) - x).abs()
    assert (error <= scale / 2 * (1 + 1e-4) + 1e-6).all()


@settings(max_examples=200, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), bounds=ranges())
def test_zero_is_exact_and_zero_point_is_an_integer_in_range(bits, symmetric, bounds):
    scale, zero_point = choose_qparams(*bounds, bits, symmetric)
    qmin, qmax = quant_range(bits, symmetric)
    assert scale > 0 and float(zero_point) == round(float(zero_point)) and qmin <= zero_point <= qmax
    assert fake_quantize(torch.zeros(3), scale, zero_point, qmin, qmax).eq(0).all()


@settings(max_examples=100, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), bounds=ranges())
def test_values_outside_the_range_clamp_to_the_end_points(bits, symmetric, bounds):
    scale, zero_point = choose_qparams(*bounds, bits, symmetric)
    qmin, qmax = quant_range(bits, symmetric)
    far = torch.tensor([-1e9, 1e9])
    assert quantize(far, scale, zero_point, qmin, qmax).tolist() == [qmin, qmax]


@settings(max_examples=100, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), bounds=ranges(), values=st.lists(finite, min_size=2, max_size=30))
def test_quantization_is_monotone(bits, symmetric, bounds, values):
    scale, zero_point = choose_qparams(*bounds, bits, symmetric)
    qmin, qmax = quant_range(bits, symmetric)
    x = torch.tensor(sorted(values))
    assert (quantize(x, scale, zero_point, qmin, qmax).diff() >= 0).all()


@pytest.mark.parametrize(("symmetric", "zero_point"), [(True, 0.0), (False, 37.0)])
def test_ties_round_to_even_and_the_simulation_computes_the_quantized_integers_bit_for_bit(symmetric, zero_point):
    qmin, qmax = quant_range(8, symmetric)
    scale = torch.rand(6, generator=torch.Generator().manual_seed(0)) * 0.05 + 1e-3  # steps that are no power of 2
    zero_points = torch.full((6,), zero_point)
    x = exact_ties(scale, 100, int(qmin - zero_point), int(qmax - zero_point))
    assert ((x / scale[:, None]).frac().abs() == 0.5).all()  # every value is a tie
    q = quantize(x, scale, zero_points, qmin, qmax, axis=0)
    assert ((q - zero_point) % 2 == 0).all()  # half to even, as ONNX's QuantizeLinear rounds
    expected = dequantize(q, scale, zero_points, axis=0)
    assert torch.equal(fake_quantize_frozen(x, scale, zero_points, qmin, qmax, axis=0), expected)
    assert torch.equal(fake_quantize(x, scale, zero_points, qmin, qmax, axis=0), expected)  # LSQ's and AdaRound's
    # What the simulation computed before (PyTorch's fused kernel) rounds some of these ties the other way.
    assert (reciprocal_rounding(x, scale[:, None]) != torch.round(x / scale[:, None])).sum() >= 10


@settings(max_examples=100, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), bounds=ranges(), values=st.lists(finite, min_size=1, max_size=30))
def test_the_frozen_simulation_is_the_reference_bit_for_bit(bits, symmetric, bounds, values):
    scale, zero_point = choose_qparams(*bounds, bits, symmetric)
    qmin, qmax = quant_range(bits, symmetric)
    x = torch.tensor(values)
    frozen = fake_quantize_frozen(x, scale, zero_point, qmin, qmax)
    assert torch.equal(frozen, dequantize(quantize(x, scale, zero_point, qmin, qmax), scale, zero_point))
    assert torch.equal(frozen, fake_quantize(x, scale, zero_point, qmin, qmax))


@pytest.mark.parametrize("axis", [None, 0])
def test_the_frozen_simulation_passes_the_gradient_where_nothing_was_clamped_as_pytorchs_kernel_does(axis):
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 3, 5, 5, generator=generator) * 3).requires_grad_()
    upstream = torch.randn(x.shape, generator=generator)
    scale = torch.tensor([0.02, 0.05, 0.1, 0.3]) if axis == 0 else torch.tensor(0.05)
    zero_point = torch.zeros_like(scale)
    fake_quantize_frozen(x, scale, zero_point, -7, 7, axis).backward(upstream)
    ours, x.grad = x.grad, None
    if axis is None:
        torch.fake_quantize_per_tensor_affine(x, scale, zero_point.int(), -7, 7).backward(upstream)
    else:
        torch.fake_quantize_per_channel_affine(x, scale, zero_point.int(), axis, -7, 7).backward(upstream)
    assert torch.equal(ours, x.grad)
    assert 0 < int((ours == 0).sum()) < x.numel()  # some values were clamped, most were not
    frozen_scale = scale.clone().requires_grad_()
    fake_quantize_frozen(x.detach(), frozen_scale, zero_point, -7, 7, axis).sum().backward()
    assert frozen_scale.grad is None  # a frozen grid does not learn


def test_ranges_and_constant_tensors():
    assert quant_range(2, True) == (-1, 1)  # ternary
    assert quant_range(8, True) == (-127, 127) and quant_range(8, False) == (0, 255)
    scale, zero_point = choose_qparams(torch.tensor(0.0), torch.tensor(0.0), 8, False)
    assert scale > 0 and zero_point == 0
    scale, _ = choose_qparams(torch.zeros(4), torch.tensor([0.0, 1.0, 0.0, 2.0]), 4, True)
    assert (scale > 0).all()  # dead channels keep a usable scale


def test_per_channel_parameters_broadcast_along_the_axis():
    w = torch.stack([torch.linspace(-1, 1, 9), torch.linspace(-100, 100, 9)]).reshape(2, 1, 3, 3)
    scale, zero_point = choose_qparams(w.amin(dim=(1, 2, 3)), w.amax(dim=(1, 2, 3)), 8, True)
    q = quantize(w, scale, zero_point, -127, 127, axis=0)
    assert q.abs().amax(dim=(1, 2, 3)).tolist() == [127, 127]
    assert torch.allclose(dequantize(q, scale, zero_point, axis=0), w, atol=float(scale.max()) / 2)


@pytest.mark.parametrize("bits", [0, 1, 17, 3.5, True, "8"])
def test_bad_bit_widths_are_rejected(bits):
    with pytest.raises(QexpError, match=r"expected an integer from 2 to 16"):  # a user error: no traceback
        check_bits(bits)


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), n=st.integers(1, 50), seed=st.integers(0, 1000))
def test_pack_round_trips_and_packs_low_bit_widths(bits, symmetric, n, seed):
    qmin, qmax = quant_range(bits, symmetric)
    q = torch.randint(qmin, qmax + 1, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack(q, bits, qmin)
    assert torch.equal(unpack(packed, bits, qmin, n), q.to(torch.int32))
    if bits in (2, 4):
        assert packed.numel() == -(-n * bits // 8)


def test_two_bit_packing_puts_four_values_in_a_byte():
    q = torch.tensor([-1, 0, 1, 1, -1])
    assert pack(q, 2, -1).tolist() == [0 + (1 << 2) + (2 << 4) + (2 << 6), 0]


def test_the_full_signed_range_uses_the_code_the_narrow_one_wastes():
    assert quant_range(2, True, narrow=False) == (-2, 1) and quant_range(8, True, narrow=False) == (-128, 127)
    # both ends fit: the negative end has one level more
    scale, zero_point = choose_qparams(torch.tensor(-2.0), torch.tensor(1.0), 2, True, narrow=False)
    assert float(scale) == 1.0 and float(zero_point) == 0
    scale, _ = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), 2, True, narrow=False)
    assert float(scale) == 3.0  # the positive end decides
    x = torch.tensor([-2.2, -1.0, -0.4, 0.0, 0.6, 1.0, 1.7])
    levels = fake_quantize(x, torch.tensor(1.0), torch.tensor(0.0), -2, 1)
    assert levels.tolist() == [-2.0, -1.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # four levels from two bits


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), seed=st.integers(0, 1000))
def test_full_range_two_bit_integers_pack_into_two_bits(n, seed):
    q = torch.randint(-2, 2, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack(q, 2, -2)
    assert torch.equal(unpack(packed, 2, -2, n), q.to(torch.int32)) and packed.numel() == -(-n * 2 // 8)
