import pytest
import torch
from torch import nn

from qexp.quant.core.affine import quantize
from qexp.quant.core.integer import integer_conv2d, requantize
from qexp.quant.core.modules import FakeQuantize, QuantLayer
from qexp.quant.core.observers import MinMaxObserver
from qexp.quant.custom.ptq import PTQConfig, calibrate, freeze


@pytest.mark.parametrize(("signed_input", "stride"), [(False, 1), (True, 1), (True, 2)])
def test_integer_conv_matches_fake_quantization_within_one_step(signed_input, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=1, bias=True)
    x = torch.randn(4, 8, 10, 10) + 0.5  # signed: a non-zero input zero point, padded with the real 0
    if not signed_input:
        x = torch.relu(x)
    config = PTQConfig(8, 8)
    layer = QuantLayer(conv, config.make_quantizer(8, conv.weight), config.make_quantizer(8))
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
