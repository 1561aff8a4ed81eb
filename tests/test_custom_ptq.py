import copy

import pytest
import torch
from torch import nn

from qexp.quant.affine import dequantize, pack, quantize
from qexp.quant.custom_ptq import PTQConfig, calibrate, freeze, insert_quantizers, quantize_model
from qexp.quant.export import exported_weight, integer_export, serialized_bytes
from qexp.quant.integer import integer_conv2d, requantize
from qexp.quant.modules import FakeQuantize, Mode, QuantLayer, quantizers
from qexp.quant.observers import MinMaxObserver


def relative_error(model: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - reference).pow(2).mean() / reference.pow(2).mean())


def test_error_falls_as_bits_rise_and_16_bits_is_nearly_exact(model_and_data):
    model, calibration, test = model_and_data
    reference = model(test).detach()
    errors = {
        bits: relative_error(quantize_model(model, PTQConfig(bits, bits), calibration)[0], reference, test)
        for bits in (2, 4, 8, 16)
    }
    assert errors[16] < 1e-6 < errors[8] < errors[4] < errors[2]


def test_every_layer_and_add_is_quantized_and_calibrated(model_and_data):
    model, calibration, _ = model_and_data
    quantized, images = quantize_model(model, PTQConfig(4, 4, "mse"), calibration)
    assert images == 64
    layers = [m for m in quantized.modules() if isinstance(m, QuantLayer)]
    assert len(layers) == 20 and not any(
        type(m) in (nn.Conv2d, nn.Linear) and m not in [layer.layer for layer in layers] for m in quantized.modules()
    )
    all_quantizers = quantizers(quantized)
    assert len(all_quantizers) == 20 * 2 + 9 * 2
    assert all(q.mode is Mode.QUANTIZE and q.observer.calibrated for q in all_quantizers.values())


def test_first_last_bits_only_changes_the_edge_layers(model_and_data):
    model, calibration, _ = model_and_data
    quantized, _ = quantize_model(model, PTQConfig(2, 4, first_last_bits=8), calibration)
    assert quantized.conv1.weight_quantizer.bits == 8 and quantized.fc.input_quantizer.bits == 8
    assert quantized.layer1[0].conv1.weight_quantizer.bits == 2
    assert quantized.layer1[0].conv1.input_quantizer.bits == 4


def test_calibration_refuses_an_empty_set(model_and_data):
    model, _, _ = model_and_data
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate(insert_quantizers(copy.deepcopy(model), PTQConfig(8, 8)), [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"w_bits": 1, "a_bits": 8}, "quant.w_bits=1"),
        ({"w_bits": 8, "a_bits": 8, "observer": "kl"}, "observer='kl'"),
        ({"w_bits": 8, "a_bits": 8, "granularity": "per_group"}, "per_group"),
    ],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PTQConfig(**kwargs)


def test_export_stores_packed_integers_that_reproduce_the_quantized_weights(model_and_data):
    model, calibration, _ = model_and_data
    sizes = {}
    for bits in (2, 4, 8):
        quantized, _ = quantize_model(model, PTQConfig(bits, 8), calibration)
        state = integer_export(quantized)
        layers = [m for m in quantized.modules() if isinstance(m, QuantLayer)]
        index = 7
        layer = layers[index]
        wq = layer.weight_quantizer
        weight = exported_weight(state, index)
        dequantized = dequantize(weight.float().flatten(1, -1), wq.scale, wq.zero_point, axis=0)
        torch.testing.assert_close(dequantized.reshape(layer.layer.weight.shape), layer.quantized_weight())
        assert state["activation_bits"].tolist() == [8] * (20 + 18)
        sizes[bits] = serialized_bytes(state)
    fp32 = serialized_bytes(model)
    assert sizes[2] < sizes[4] < sizes[8] < 0.3 * fp32
    assert sizes[2] < 0.1 * fp32  # 2 bits of 32, plus scales and biases


@pytest.mark.parametrize(("signed_input", "stride"), [(False, 1), (True, 1), (True, 2)])
def test_integer_conv_matches_fake_quantization_within_one_step(signed_input, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=1, bias=True)
    x = torch.randn(4, 8, 10, 10) + 0.5  # signed: a non-zero input zero point, padded with the real 0
    if not signed_input:
        x = torch.relu(x)
    config = PTQConfig(8, 8)
    layer = QuantLayer(conv, config.make_quantizer(8, True), config.make_quantizer(8, False))
    output = FakeQuantize(MinMaxObserver(8, symmetric=False))
    model = nn.Sequential(layer, output)
    calibrate(model, [x])
    freeze(model)
    with torch.no_grad():
        fake = model(x)
    xq, wq = layer.input_quantizer, layer.weight_quantizer
    x_int = quantize(x, xq.scale, xq.zero_point, xq.qmin, xq.qmax)
    w_int = quantize(conv.weight, wq.scale, wq.zero_point, wq.qmin, wq.qmax, axis=0)
    bias_int = torch.round(conv.bias / (xq.scale * wq.scale))
    assert (int(xq.zero_point) != 0) == signed_input
    accumulator = integer_conv2d(x_int, int(xq.zero_point), w_int, bias_int, stride=stride)
    assert accumulator.dtype == torch.int32
    out_int = requantize(accumulator, xq.scale * wq.scale / output.scale, int(output.zero_point), 0, 255)
    integer = (out_int - output.zero_point) * output.scale
    assert (integer - fake).abs().max() <= output.scale * (1 + 1e-5)
    assert (integer == fake).float().mean() > 0.95  # almost always the very same integer


def test_two_bit_packing_puts_four_values_in_a_byte():
    q = torch.tensor([-1, 0, 1, 1, -1])
    assert pack(q, 2, -1).tolist() == [0 + (1 << 2) + (2 << 4) + (2 << 6), 0]


def test_quantizers_are_told_apart_by_role(model_and_data):
    model, calibration, _ = model_and_data
    quantized, _ = quantize_model(model, PTQConfig(4, 8), calibration)
    weights, activations = quantizers(quantized, "weight"), quantizers(quantized, "activation")
    assert len(weights) == 20 and len(activations) == 38
    assert {q.bits for q in weights.values()} == {4} and {q.bits for q in activations.values()} == {8}
    with pytest.raises(ValueError, match="kind='weights'"):
        quantizers(quantized, "weights")
