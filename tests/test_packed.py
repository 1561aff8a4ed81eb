import torch

from qexp.quant.core.affine import dequantize
from qexp.quant.core.modules import QuantLayer
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.export.packed import exported_weight, integer_export, serialized_bytes


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
