import pytest
from omegaconf import OmegaConf

from qexp.errors import QexpError
from qexp.quant import PTQConfig, QATConfig, Unsupported, check_supported, ptq_config, qat_config, recovery


def test_check_supported_refuses_unknown_settings_as_user_errors_and_gaps_as_unsupported(compose_in):
    with pytest.raises(QexpError, match=r"quant.method='gptq' is not known"):
        check_supported(OmegaConf.create({"method": "gptq"}))
    with pytest.raises(QexpError, match=r"quant.lr=0.0 is out of range"):
        check_supported(compose_in("quantize", ["quant=qat", "bits=4", "quant.lr=0.0"]).quant)
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
    check_supported(compose_in("quantize", ["quant=qat", "bits=2", "quant.a_bits=4"]).quant)


def test_ptq_config_and_recovery_read_the_composed_cell(compose_in):
    overrides = ["bits=4", "quant.a_bits=8", "quant.equalize=true", "quant.reconstruct=layer"]
    overrides.append("quant.bias_correction=true")
    quant = compose_in("quantize", overrides).quant
    config = ptq_config(quant)
    assert isinstance(config, PTQConfig) and (config.w_bits, config.a_bits) == (4, 8)
    assert config.reconstruction is not None and config.reconstruction.unit == "layer"
    assert config.mixed_widths == (8, 4, 2) and config.average_bits is None
    assert config.shared_activations  # one grid per tensor, as integer runtimes run it
    assert not ptq_config(compose_in("quantize", ["quant.shared_activations=false"]).quant).shared_activations
    assert recovery(quant) == "CLE + AdaRound+LSQ+QDrop 2000 steps, 0.125 held out + bias corr."
    all_fitted = compose_in("quantize", [*overrides, "quant.reconstruction.held_out=0"]).quant
    assert recovery(all_fitted) == "CLE + AdaRound+LSQ+QDrop 2000 steps + bias corr."  # as cells made before the split
    assert recovery(compose_in("quantize", []).quant) is None


def test_a_qat_cell_is_our_ptq_cell_plus_its_training_settings(compose_in):
    quant = compose_in("quantize", ["quant=qat", "bits=2", "quant.a_bits=4", "observer=mse", "quant.epochs=3"]).quant
    assert ptq_config(quant) == ptq_config(compose_in("quantize", ["bits=2", "quant.a_bits=4", "observer=mse"]).quant)
    assert qat_config(quant) == QATConfig(epochs=3)  # the other settings are the documented defaults
