import pytest

from qexp.errors import QexpError
from qexp.quant.core.modules import QuantLayer
from qexp.quant.custom.mixed import greedy_assignment, weight_bytes
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from tests.test_ptq import batches, output_errors, tiny_resnet


def test_greedy_assignment_keeps_the_sensitive_layer_wide_and_fits_the_budget():
    counts = {"a": 100, "b": 100, "c": 200}
    errors = {(name, bits): error for name, base in (("a", 10.0), ("b", 0.1), ("c", 0.2)) for bits, error in
              ((8, 0.0), (4, base), (2, 10 * base))}  # fmt: skip
    bits = greedy_assignment(counts, errors, (8, 4, 2), average_bits=4)
    assert weight_bytes(counts, bits) <= 4 * 400 / 8
    assert bits["a"] == 8 and bits["b"] < 8 and bits["c"] < 8
    assert greedy_assignment(counts, errors, (8, 4, 2), average_bits=8) == {"a": 8, "b": 8, "c": 8}
    with pytest.raises(ValueError, match="below the narrowest"):
        greedy_assignment(counts, errors, (8, 4, 2), average_bits=1.5)


def test_mixed_precision_beats_the_uniform_narrow_width_within_its_budget():
    model = tiny_resnet()
    mixed = PTQConfig(2, 16, average_bits=3.0, mixed_widths=(4, 2))
    quantized, _ = quantize_model(model, mixed, batches(1))
    widths = {name: m.weight_quantizer.bits for name, m in quantized.named_modules() if isinstance(m, QuantLayer)}
    counts = {name: m.layer.weight.numel() for name, m in quantized.named_modules() if isinstance(m, QuantLayer)}
    assert set(widths.values()) == {4, 2} and weight_bytes(counts, widths) <= 3.0 * sum(counts.values()) / 8
    [error_mixed], [error_uniform] = (output_errors(model, c, [""]) for c in (mixed, PTQConfig(2, 16)))
    assert error_mixed < 0.7 * error_uniform
    with pytest.raises(ValueError, match=r"quant.average_bits=1.0"):
        PTQConfig(2, 16, average_bits=1.0)


def test_reconstruction_runs_on_the_mixed_model_and_lowers_its_error_at_the_widths_mixed_precision_chose():
    from qexp.quant.custom.reconstruct import ReconstructionConfig

    model = tiny_resnet()
    plan = {"observer": "mse", "average_bits": 3.0, "mixed_widths": (4, 2)}
    mixed = PTQConfig(2, 4, **plan)
    learned = PTQConfig(2, 4, **plan, reconstruction=ReconstructionConfig("block", steps=200))
    widths = [
        {name: m.weight_quantizer.bits for name, m in quantize_model(model, c, batches(1))[0].named_modules()
         if isinstance(m, QuantLayer)}
        for c in (mixed, learned)
    ]  # fmt: skip
    assert widths[0] == widths[1] and set(widths[0].values()) == {4, 2}  # the same plan, then fitted
    [error_mixed], [error_learned] = (output_errors(model, c, [""]) for c in (mixed, learned))
    assert error_learned < 0.9 * error_mixed


def test_the_budget_check_is_one_rule_for_the_config_and_the_assignment():
    with pytest.raises(QexpError, match=r"quant.average_bits=1.5 is below the narrowest of quant.mixed_widths=\[8, 4"):
        greedy_assignment({"a": 1}, {("a", 8): 0.0}, (8, 4, 2), average_bits=1.5)
    with pytest.raises(QexpError, match=r"quant.average_bits=1.5 is below the narrowest of quant.mixed_widths=\[8, 4"):
        PTQConfig(2, 16, average_bits=1.5)
