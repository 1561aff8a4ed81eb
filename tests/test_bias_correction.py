from qexp.quant.custom.ptq import PTQConfig
from tests.test_ptq import output_errors, tiny_resnet


def test_bias_correction_lowers_the_output_error():
    model = tiny_resnet()
    plain, corrected = PTQConfig(2, 16), PTQConfig(2, 16, bias_correction=True)
    [error], [error_plain] = (output_errors(model, c, [""]) for c in (corrected, plain))
    assert error < 0.8 * error_plain


def test_the_correction_is_the_weight_rounding_error_alone_whatever_the_activation_width():
    """Measured on float inputs, a layer's correction does not absorb upstream activation grids: at W2A4 and W2A16
    the same rounded weights get the same bias, which gives each output channel the float layer's mean."""
    import torch

    from qexp.quant.core.capture import keep_channel_means, keep_input, record
    from qexp.quant.core.fold import fold_batchnorm
    from qexp.quant.core.modules import QuantLayer, with_weight
    from qexp.quant.custom.ptq import quantize_model
    from tests.test_ptq import batches

    model, calibration = tiny_resnet(), batches(1)
    narrow, _ = quantize_model(model, PTQConfig(2, 4, bias_correction=True), calibration)
    wide, _ = quantize_model(model, PTQConfig(2, 16, bias_correction=True), calibration)
    layers = {name: m for name, m in narrow.named_modules() if isinstance(m, QuantLayer)}
    reference = fold_batchnorm(model)
    inputs = record(reference, list(layers), calibration, keep_input)
    means = record(reference, list(layers), calibration, keep_channel_means)
    for name, quantized in layers.items():
        assert torch.allclose(quantized.layer.bias, wide.get_submodule(name).layer.bias, atol=1e-6), name
        with torch.no_grad():
            output = with_weight(quantized.layer, inputs[name], quantized.quantized_weight(), quantized.layer.bias)
        corrected = keep_channel_means(inputs[name], output).mean(0)
        torch.testing.assert_close(corrected, means[name].mean(0), atol=1e-4, rtol=1e-4)
