import torch

from qexp.quant.export.packed import serialized_bytes
from qexp.quant.pytorch.float16 import as_half_model, round_to_float16, stored_float16, to_float16


def test_simulated_float16_computes_what_a_half_model_computes(model_and_data):
    model, _, test = model_and_data
    simulated, half = to_float16(model), as_half_model(model)
    assert next(half.parameters()).dtype == torch.float16
    assert next(simulated.parameters()).dtype == torch.float32
    with torch.no_grad():
        out, reference, fp32 = simulated(test), half(test), model(test)
    assert out.dtype == torch.float32
    assert torch.equal(out, round_to_float16(out))  # every output value is a float16 number
    # the two differ only in how each kernel accumulates and rounds inside: float16-level noise
    assert (out - reference).abs().max() <= 2**-9 * reference.abs().max()
    assert (out - fp32).abs().max() > 0  # and float16 is not fp32
    assert torch.equal(out.argmax(1), reference.argmax(1))


def test_float16_weights_are_rounded_and_stored_at_two_bytes(model_and_data):
    model = model_and_data[0]
    simulated = to_float16(model)
    weight = simulated.model.conv1.weight
    assert torch.equal(weight, round_to_float16(model.conv1.weight)) and not torch.equal(weight, model.conv1.weight)
    stored = stored_float16(simulated)
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert serialized_bytes(stored) < 0.6 * serialized_bytes(model)
