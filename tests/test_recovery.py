"""Low-bit recovery options: each must beat round-to-nearest on a tiny model's reconstruction error."""

import pytest
import torch
from torch import nn

from qexp.models.resnet import BasicBlock, ResNet
from qexp.quant.affine import fake_quantize
from qexp.quant.capture import keep_output, record
from qexp.quant.custom_ptq import PTQConfig, quantize_model
from qexp.quant.equalize import equalization_scales, equalize_blocks
from qexp.quant.fold import fold_batchnorm
from qexp.quant.mixed import greedy_assignment, weight_bytes
from qexp.quant.modules import QuantLayer
from qexp.quant.reconstruct import (
    LearnedStepActivation,
    ReconstructionConfig,
    annealed_beta,
    initial_logits,
    rectified_sigmoid,
    rounding_regularizer,
    units,
)
from tests.test_fold import randomise_batchnorm


def tiny_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(ResNet(blocks_per_stage=1, widths=(8, 16, 16)), seed)


def batches(seed: int, count: int = 2, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 16, 16, generator=generator) for _ in range(count)]


@torch.no_grad()
def output_errors(model: nn.Module, config: PTQConfig, names: list[str], only: list[str] | None = None) -> list[float]:
    """Mean squared error of each named module's output (the logits for "") vs the float model, on unseen images."""
    quantized, _ = quantize_model(model, config, batches(1), only)
    reference = fold_batchnorm(model)
    test = batches(2)
    got, want = (record(m, names, test, keep_output) for m in (quantized, reference))
    return [float((got[name] - want[name]).pow(2).mean()) for name in names]


def test_equalization_keeps_the_function_and_balances_the_ranges():
    model = fold_batchnorm(tiny_resnet())
    block = model.layer1[0]
    with torch.no_grad():  # make the channel ranges of conv1 wildly uneven
        block.conv1.weight.mul_(torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1))
    x = batches(0)[0]
    before = model(x)
    assert equalize_blocks(model) == 3
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
    r1 = block.conv1.weight.abs().flatten(1).amax(1)
    r2 = block.conv2.weight.abs().transpose(0, 1).flatten(1).amax(1)
    torch.testing.assert_close(r1, r2)
    assert torch.equal(equalization_scales(torch.zeros(2, 1, 3, 3), torch.ones(1, 2, 3, 3)), torch.ones(2))


def test_equalization_lowers_the_error_of_per_tensor_weights():
    model = tiny_resnet()
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1))
    plain = PTQConfig(4, 16, granularity="per_tensor")
    equalized = PTQConfig(4, 16, granularity="per_tensor", equalize=True)
    only = ["layer1.0.conv1", "layer1.0.conv2"]
    [error], [error_plain] = (output_errors(model, c, ["layer1.0"], only) for c in (equalized, plain))
    assert error < 0.9 * error_plain


def test_equalization_refuses_an_unfolded_model():
    with pytest.raises(ValueError, match="fold_batchnorm"):
        equalize_blocks(tiny_resnet())


def test_bias_correction_lowers_the_output_error():
    model = tiny_resnet()
    plain, corrected = PTQConfig(2, 16), PTQConfig(2, 16, bias_correction=True)
    [error], [error_plain] = (output_errors(model, c, [""]) for c in (corrected, plain))
    assert error < 0.8 * error_plain


def test_adaround_helpers():
    remainder = torch.tensor([0.0, 0.25, 0.5, 0.9])
    torch.testing.assert_close(rectified_sigmoid(initial_logits(remainder)), remainder)
    h = torch.tensor([0.0, 1.0, 0.5])
    assert float(rounding_regularizer(h, 2.0)) == pytest.approx(1.0)
    assert annealed_beta(10, 100, 0.2) is None
    assert annealed_beta(20, 100, 0.2) == 20.0 and annealed_beta(100, 100, 0.2) == pytest.approx(2.0)


def test_units_are_blocks_plus_the_layers_outside_them():
    quantized, _ = quantize_model(tiny_resnet(), PTQConfig(8, 8), batches(1))
    assert units(quantized, "block") == ["conv1", "layer1.0", "layer2.0", "layer3.0", "fc"]
    assert len(units(quantized, "layer")) == 8
    assert all(isinstance(quantized.get_submodule(n), BasicBlock) for n in units(quantized, "block")[1:-1])


@pytest.mark.parametrize(("granularity", "name"), [("layer", "layer2.0.conv2"), ("block", "layer2.0")])
def test_learned_rounding_beats_round_to_nearest(granularity, name):
    model = tiny_resnet()
    rtn = PTQConfig(2, 8, observer="mse")
    learned = PTQConfig(2, 8, observer="mse", reconstruction=ReconstructionConfig(granularity, steps=300))
    errors, errors_rtn = (output_errors(model, c, [name, ""]) for c in (learned, rtn))
    assert errors[0] < 0.85 * errors_rtn[0]  # the unit it reconstructs
    if granularity == "block":  # a block's error is what reaches the logits
        assert errors[1] < errors_rtn[1]


def test_learned_rounding_keeps_weights_on_the_grid():
    config = PTQConfig(2, 4, reconstruction=ReconstructionConfig("block", steps=20))
    quantized, _ = quantize_model(tiny_resnet(), config, batches(1))
    layer = quantized.layer1[0].conv2
    q = layer.layer.weight / layer.weight_quantizer.scale.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(q, q.round(), atol=1e-4, rtol=0)
    assert set(q.round().unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_bad_reconstruction_settings_are_rejected():
    with pytest.raises(ValueError, match=r"quant.reconstruct='net'"):
        ReconstructionConfig("net")
    with pytest.raises(ValueError, match=r"quant.reconstruction.drop=1.0"):
        ReconstructionConfig(drop=1.0)


def test_greedy_assignment_keeps_the_sensitive_layer_wide_and_fits_the_budget():
    counts = {"a": 100, "b": 100, "c": 200}
    errors = {(name, bits): error for name, base in (("a", 10.0), ("b", 0.1), ("c", 0.2)) for bits, error in
              ((8, 0.0), (4, base), (2, 10 * base))}  # fmt: skip
    bits = greedy_assignment(counts, errors, (8, 4, 2), average_bits=4)
    assert weight_bytes(counts, bits) <= 4 * 400 / 8
    assert bits["a"] == 8 and bits["b"] < 8 and bits["c"] < 8
    assert greedy_assignment(counts, errors, (8, 4, 2), average_bits=8) == {"a": 8, "b": 8, "c": 8}
    with pytest.raises(ValueError, match="below the narrowest"):
        greedy_assignment(counts, errors, (8, 4, 2), average_bits=1.5)


def test_mixed_precision_beats_the_uniform_narrow_width_within_its_budget():
    model = tiny_resnet()
    mixed = PTQConfig(2, 16, average_bits=3.0, mixed_widths=(4, 2))
    quantized, _ = quantize_model(model, mixed, batches(1))
    widths = {name: m.weight_quantizer.bits for name, m in quantized.named_modules() if isinstance(m, QuantLayer)}
    counts = {name: m.layer.weight.numel() for name, m in quantized.named_modules() if isinstance(m, QuantLayer)}
    assert set(widths.values()) == {4, 2} and weight_bytes(counts, widths) <= 3.0 * sum(counts.values()) / 8
    [error_mixed], [error_uniform] = (output_errors(model, c, [""]) for c in (mixed, PTQConfig(2, 16)))
    assert error_mixed < 0.7 * error_uniform
    with pytest.raises(ValueError, match=r"quant.average_bits=1.0"):
        PTQConfig(2, 16, average_bits=1.0)


def test_learned_step_sizes_are_written_back_and_qdrop_only_acts_while_fitting():
    model = tiny_resnet()
    rtn, _ = quantize_model(model, PTQConfig(4, 4), batches(1))
    config = PTQConfig(4, 4, reconstruction=ReconstructionConfig("block", steps=30, scale_lr=1e-2))
    learned, _ = quantize_model(model, config, batches(1))
    before, after = (m.layer1[0].conv2.input_quantizer.scale for m in (rtn, learned))
    assert not torch.allclose(before, after)
    stand_in = LearnedStepActivation(rtn.layer1[0].conv2.input_quantizer, drop=0.9).eval()
    x = torch.rand(4, 16, 8, 8)
    expected = fake_quantize(x, before, stand_in.zero_point, stand_in.qmin, stand_in.qmax)
    assert torch.equal(stand_in(x), expected)
    assert not torch.equal(stand_in.train()(x), expected)


def test_recovery_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match=r"quant.reconstruction.steps=0"):
        ReconstructionConfig(steps=0)
    with pytest.raises(ValueError, match=r"cannot be combined"):
        PTQConfig(4, 4, average_bits=3.0, first_last_bits=8)
    with pytest.raises(ValueError, match=r"\['layer9.conv1'\] are not layers"):
        quantize_model(tiny_resnet(), PTQConfig(4, 4), batches(1), only=["layer9.conv1"])
