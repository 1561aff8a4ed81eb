import pytest
import torch
from torch import nn

from qexp.errors import QexpError
from qexp.quant.export.packed import serialized_bytes
from qexp.quant.pytorch.fx import check_converted, check_supported, int8_qconfig_mapping, quantize_int8
from qexp.quant.unsupported import Unsupported


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


def test_support_is_int8_and_float16_with_pytorchs_observers():
    check_supported((8, 8), "mse", "per_tensor")
    check_supported((16, 16), "percentile", "per_channel")  # float16: nothing is observed
    for bits in ((4, 4), (8, 16), (2, 2)):
        with pytest.raises(Unsupported, match=f"W{bits[0]}A{bits[1]}: torch.ao.quantization offers int8"):
            check_supported(bits, "minmax", "per_channel")
    with pytest.raises(Unsupported, match="observer='percentile' has no counterpart"):
        check_supported((8, 8), "percentile", "per_channel")
    with pytest.raises(QexpError, match=r"quant.granularity='per_group'"):
        int8_qconfig_mapping("minmax", "per_group")
