import pytest
from omegaconf import OmegaConf

from qexp.errors import QexpError
from qexp.quant import PTQConfig, Unsupported, check_supported, ptq_config, recovery


def test_check_supported_refuses_unknown_settings_as_user_errors_and_gaps_as_unsupported(compose_in):
    with pytest.raises(QexpError, match=r"quant.method='qat' is not known"):
        check_supported(OmegaConf.create({"method": "qat"}))
    with pytest.raises(QexpError, match=r"quant.w_bits=1 is not supported"):
        check_supported(compose_in("quantize", ["quant.w_bits=1"]).quant)
    with pytest.raises(QexpError, match=r"quant.flow='onnx' is not known"):
        check_supported(compose_in("quantize", ["quant=torch_ptq", "quant.flow=onnx"]).quant)
    with pytest.raises(Unsupported, match=r"W4A4: torch.ao.quantization offers int8"):
        check_supported(compose_in("quantize", ["quant=torch_ptq", "bits=4"]).quant)
    with pytest.raises(Unsupported, match="W4A4: the pt2e x86 Inductor quantizer is int8 only"):
        check_supported(compose_in("quantize", ["quant=torch_ptq", "quant.flow=pt2e", "bits=4"]).quant)
    check_supported(compose_in("quantize", ["quant=none"]).quant)
    check_supported(compose_in("quantize", ["bits=2", "observer=percentile"]).quant)


def test_ptq_config_and_recovery_read_the_composed_cell(compose_in):
    overrides = ["bits=4", "quant.a_bits=8", "quant.equalize=true", "quant.reconstruct=layer"]
    overrides.append("quant.bias_correction=true")
    quant = compose_in("quantize", overrides).quant
    config = ptq_config(quant)
    assert isinstance(config, PTQConfig) and (config.w_bits, config.a_bits) == (4, 8)
    assert config.reconstruction is not None and config.reconstruction.unit == "layer"
    assert config.mixed_widths == (8, 4, 2) and config.average_bits is None
    assert recovery(quant) == "CLE + AdaRound+LSQ+QDrop 2000 steps + bias corr."
    assert recovery(compose_in("quantize", []).quant) is None
