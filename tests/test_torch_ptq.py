import pytest
import torch
from torch import nn

from qexp.quant.export import serialized_bytes
from qexp.quant.torch_ptq import Unsupported, check_converted, quantize_int8, to_float16


@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_fx_int8_runs_on_quantized_kernels_and_tracks_the_float_model(model_and_data, observer):
    model, calibration, test = model_and_data
    converted, images = quantize_int8(model, calibration, observer, "per_channel")
    assert images == 64
    quantized_convs = [m for m in converted.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)]
    assert len(quantized_convs) == 19  # conv+BN(+ReLU) fused into quantized convs
    assert not [m for m in converted.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d)]
    with torch.no_grad():
        reference, out = model(test), converted(test)
    assert float((out - reference).pow(2).mean() / reference.pow(2).mean()) < 0.01
    assert serialized_bytes(converted) < 0.35 * serialized_bytes(model)


def test_percentile_has_no_pytorch_counterpart(model_and_data):
    model, calibration, _ = model_and_data
    with pytest.raises(Unsupported, match="percentile"):
        quantize_int8(model, calibration, "percentile", "per_channel")


def test_check_converted_catches_float_layers():
    with pytest.raises(RuntimeError, match="left float layers"):
        check_converted(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_float16_model_takes_float32_and_is_close(model_and_data):
    model, _, test = model_and_data
    half = to_float16(model)
    assert next(half.parameters()).dtype == torch.float16
    with torch.no_grad():
        out = half(test)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(test).detach(), atol=0.05, rtol=0.01)
