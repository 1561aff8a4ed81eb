"""Payload bytes count the numbers a kernel needs at their own precision, for every method alike."""

import math

import pytest
import torch
from torch import nn

from qexp.models.resnet import ResNet
from qexp.quant import PTQConfig, quantize_model, serialized_bytes
from qexp.quant.core.modules import quantizers
from qexp.quant.export.packed import integer_export
from qexp.quant.export.payload import ours_payload_bits, payload_bytes
from qexp.quant.pytorch import fx
from qexp.quant.pytorch.float16 import to_float16
from tests.test_fold import randomise_batchnorm


@pytest.fixture(scope="module")
def tiny():
    """One block per stage (7 convs, the classifier), BatchNorm statistics random, two calibration batches."""
    torch.manual_seed(0)
    model = randomise_batchnorm(ResNet(blocks_per_stage=1, widths=(8, 16, 16))).eval()
    generator = torch.Generator().manual_seed(1)
    return model, [torch.randn(16, 3, 16, 16, generator=generator) for _ in range(2)]


def weights_and_channels(model: nn.Module) -> tuple[int, int]:
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return sum(m.weight.numel() for m in layers), sum(m.weight.shape[0] for m in layers)


def test_float_models_count_every_float_at_its_size(tiny):
    model, _ = tiny
    batchnorm_statistics = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    floats = sum(p.numel() for p in model.parameters()) + batchnorm_statistics
    assert payload_bytes(model) == 4 * floats
    assert payload_bytes(to_float16(model)) == 2 * floats


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_ours_counts_packed_weights_float32_scales_and_biases_and_activation_parameters(tiny, bits):
    model, calibration = tiny
    quantized, _ = quantize_model(model, PTQConfig(w_bits=bits, a_bits=bits), calibration)
    weights, channels = weights_and_channels(model)
    activations = len(quantizers(quantized, "activation"))
    expected_bits = weights * bits + 32 * channels * 2 + activations * (32 + bits)
    assert payload_bytes(quantized) == math.ceil(expected_bits / 8)
    assert payload_bytes(quantized) < serialized_bytes(integer_export(quantized))


def test_a_shared_activation_quantizer_is_exported_and_counted_once(tiny):
    model, calibration = tiny
    per_reader, shared = (
        quantize_model(model, PTQConfig(w_bits=4, a_bits=4, shared_activations=share), calibration)[0]
        for share in (False, True)
    )
    exports = [integer_export(m) for m in (per_reader, shared)]
    assert [len(export["activation_scales"]) for export in exports] == [14, 11]  # 3 tensors with two readers each
    assert torch.equal(exports[0]["weights"], exports[1]["weights"])
    assert ours_payload_bits(per_reader) - ours_payload_bits(shared) == 3 * (32 + 4)  # a scale and a 4-bit zero point


def test_pytorch_fx_int8_counts_int8_weights_and_qparams_not_their_float64_storage(tiny):
    model, calibration = tiny
    converted, _ = fx.quantize_int8(model, calibration, "minmax", "per_channel")
    weights, channels = weights_and_channels(model)
    # per channel: scale (4 bytes), zero point (1), bias (4); per quantized module and per graph-level
    # activation (input, 3 adds, 2 padded shortcuts, the classifier's input): output scale and zero point
    modules, graph_activations = 8, 7
    assert payload_bytes(converted) == weights + 9 * channels + 5 * (modules + graph_activations)
    assert payload_bytes(converted) < 0.5 * serialized_bytes(converted)  # the file is mostly format here


def test_pytorch_pt2e_int8_counts_what_its_graph_reads(tiny):
    pytest.importorskip("torchao")
    from qexp.quant.pytorch.pt2e import Graph, quantize_pt2e

    model, calibration = tiny
    converted, _ = quantize_pt2e(model, calibration, "minmax")
    weights, channels = weights_and_channels(model)
    activation_points = sum(1 for n in converted.graph.nodes if str(n.target).endswith("quantize_per_tensor.default")
                            and "dequantize" not in str(n.target))  # fmt: skip
    assert payload_bytes(Graph(converted)) == weights + 9 * channels + 5 * activation_points
    fx_converted, _ = fx.quantize_int8(model, calibration, "minmax", "per_channel")
    assert abs(payload_bytes(Graph(converted)) - payload_bytes(fx_converted)) < 5 * 16  # like for like
