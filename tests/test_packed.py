import torch
from torch import nn

from qexp.quant.core.affine import dequantize
from qexp.quant.core.modules import FakeQuantize, Mode, QuantLayer
from qexp.quant.core.observers import MinMaxObserver
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.export.packed import exported_weight, integer_export, serialized_bytes
from tests.test_affine import exact_ties, reciprocal_rounding


def tied_layer(calibration: torch.Tensor) -> QuantLayer:
    """An 8-bit conv of 3 -> 6 channels whose weights all lie exactly halfway between two levels of their grid.

    Its per-channel weight scales are set by hand (no powers of 2); its input quantizer is calibrated on
    ``calibration``.
    """
    scale = torch.rand(6, generator=torch.Generator().manual_seed(3)) * 0.02 + 1e-3
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(exact_ties(scale, 27, -127, 127).reshape(conv.weight.shape))
    weight_quantizer = FakeQuantize(MinMaxObserver(8, symmetric=True, axis=0, shape=conv.weight.shape))
    weight_quantizer.scale.copy_(scale)
    input_quantizer = FakeQuantize(MinMaxObserver(8, symmetric=False))
    input_quantizer.observer(calibration)
    input_quantizer.freeze()
    for quantizer in (weight_quantizer, input_quantizer):
        quantizer.mode = Mode.QUANTIZE
    return QuantLayer(conv, weight_quantizer, input_quantizer)


def test_exported_integers_are_the_simulated_weights_bit_for_bit_on_exact_ties():
    layer = tied_layer(torch.randn(4, 3, 8, 8))
    wq = layer.weight_quantizer
    integers = exported_weight(integer_export(nn.Sequential(layer)), 0)
    dequantized = dequantize(integers.float(), wq.scale, wq.zero_point, axis=0)
    assert torch.equal(dequantized, layer.quantized_weight())  # the weights that were evaluated are the ones stored
    # The rounding the simulation used before stores other integers for some of these weights.
    before = reciprocal_rounding(layer.layer.weight, wq.scale[:, None, None, None])
    assert (before != integers).sum() >= 5


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
        # 20 layer inputs and 18 add operands, of which the 9 shortcut operands share a block output's grid
        assert state["activation_bits"].tolist() == [8] * (20 + 18 - 9)
        sizes[bits] = serialized_bytes(state)
    fp32 = serialized_bytes(model)
    assert sizes[2] < sizes[4] < sizes[8] < 0.3 * fp32
    assert sizes[2] < 0.1 * fp32  # 2 bits of 32, plus scales and biases
