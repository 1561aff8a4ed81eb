from qexp.quant.custom.ptq import PTQConfig
from tests.test_ptq import output_errors, tiny_resnet


def test_bias_correction_lowers_the_output_error():
    model = tiny_resnet()
    plain, corrected = PTQConfig(2, 16), PTQConfig(2, 16, bias_correction=True)
    [error], [error_plain] = (output_errors(model, c, [""]) for c in (corrected, plain))
    assert error < 0.8 * error_plain
