import torch

from qexp.quant.pytorch.float16 import to_float16


def test_float16_model_takes_float32_and_is_close(model_and_data):
    model, _, test = model_and_data
    half = to_float16(model)
    assert next(half.parameters()).dtype == torch.float16
    with torch.no_grad():
        out = half(test)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(test).detach(), atol=0.05, rtol=0.01)
