import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qexp.models import resnet20
from qexp.quant.core.affine import dequantize, quantize
from qexp.quant.core.modules import (
    FakeQuantize,
    Mode,
    QuantOutput,
    SharedGrid,
    layer_bits,
    layer_names,
    quantizers,
    shared_grids,
    swap_module,
)
from qexp.quant.core.observers import MinMaxObserver
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from tests.test_affine import bits_st, finite


@settings(max_examples=100, deadline=None)
@given(bits=bits_st, symmetric=st.booleans(), values=st.lists(finite, min_size=1, max_size=30), factor=finite)
def test_a_frozen_quantizer_computes_the_integers_that_are_exported(bits, symmetric, values, factor):
    x = torch.tensor(values)
    quantizer = FakeQuantize(MinMaxObserver(bits, symmetric))
    quantizer.mode = Mode.OBSERVE
    assert quantizer(x) is x
    quantizer.freeze()
    quantizer.mode = Mode.QUANTIZE
    y = x * factor  # values off the observed range too, so that some are clamped
    q = quantize(y, quantizer.scale, quantizer.zero_point, quantizer.qmin, quantizer.qmax)
    assert torch.equal(quantizer(y), dequantize(q, quantizer.scale, quantizer.zero_point))


def test_quantizers_are_told_apart_by_role(model_and_data):
    model, calibration, _ = model_and_data
    quantized, _ = quantize_model(model, PTQConfig(4, 8, shared_activations=False), calibration)
    weights, activations = quantizers(quantized, "weight"), quantizers(quantized, "activation")
    assert len(weights) == 20 and len(activations) == 38
    assert {q.bits for q in weights.values()} == {4} and {q.bits for q in activations.values()} == {8}
    with pytest.raises(ValueError, match="kind='weights'"):
        quantizers(quantized, "weights")


def test_shared_activations_quantize_each_block_output_once_for_both_readers(model_and_data):
    model, calibration, _ = model_and_data
    per_reader, _ = quantize_model(model, PTQConfig(4, 8, shared_activations=False), calibration)
    shared, _ = quantize_model(model, PTQConfig(4, 8, shared_activations=True), calibration)
    # 38 -> 29: the stem's output and the outputs of the first 8 blocks lose their second quantizer
    # (the next conv1's input and the next add's shortcut operand become one, at the producing ReLU).
    assert len(quantizers(shared, "activation")) == 29 and len(quantizers(shared, "weight")) == 20
    blocks = [f"layer{stage}.{index}" for stage in (1, 2, 3) for index in range(3)]
    producers = {name: m.output_quantizer for name, m in shared.named_modules() if isinstance(m, QuantOutput)}
    assert list(producers) == ["relu", *(f"{block}.relu2" for block in blocks[:-1])]  # layer3.2's is only pooled
    assert len(shared_grids(shared)) == 18 and not shared_grids(per_reader)
    for quantizer, name in zip(producers.values(), blocks, strict=True):  # each block reads the one before
        block, own = shared.get_submodule(name), per_reader.get_submodule(name)
        assert block.conv1.input_quantizer.quantizer is block.add.quantizer_b.quantizer is quantizer
        assert isinstance(block.conv2.input_quantizer, FakeQuantize) and isinstance(block.add.quantizer_a, FakeQuantize)
        # With minmax the one grid is what conv1's own quantizer chose on the same tensor; so did an
        # identity shortcut's (the option-A shortcut's saw every second pixel only).
        assert torch.equal(quantizer.scale, own.conv1.input_quantizer.scale)
        assert torch.equal(quantizer.zero_point, own.conv1.input_quantizer.zero_point)
        if name not in ("layer2.0", "layer3.0"):
            assert torch.equal(quantizer.scale, own.add.quantizer_b.scale)
    # The image and the pooled features keep their own quantizers; every reader keeps its width.
    assert all(isinstance(shared.get_submodule(name).input_quantizer, FakeQuantize) for name in ("conv1", "fc"))
    assert layer_bits(shared) == layer_bits(per_reader)
    assert isinstance(shared.layer1[1].add.quantizer_b, SharedGrid)
    assert "input_quantizer=SharedGrid(quantized by layer1.0.relu2)" in repr(shared.layer1[1].conv1)


def test_layer_names_and_bits_follow_module_order(model_and_data):
    model, calibration, _ = model_and_data
    names = layer_names(model)
    assert len(names) == 20 and names[0] == "conv1" and names[-1] == "fc"
    quantized, _ = quantize_model(model, PTQConfig(2, 4, first_last_bits=8), calibration)
    bits = layer_bits(quantized)
    assert list(bits) == names and bits["conv1"] == bits["fc"] == [8, 8] and bits["layer1.0.conv1"] == [2, 4]
    assert layer_bits(model) == {}


def test_swap_module_returns_what_it_replaced_and_swaps_back():
    model = resnet20()
    original = model.layer2[1].conv1
    replacement = nn.Identity()
    assert swap_module(model, "layer2.1.conv1", replacement) is original
    assert model.layer2[1].conv1 is replacement
    assert swap_module(model, "layer2.1.conv1", original) is replacement and model.layer2[1].conv1 is original
    top = model.fc
    assert swap_module(model, "fc", nn.Identity()) is top
