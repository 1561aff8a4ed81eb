"""PyTorch's pt2e flow on a tiny model: export with a dynamic batch, calibrate, convert, lower."""

import math

import pytest
import torch

from qexp.cells.evaluate import sqnr_db
from qexp.models.resnet import ResNet
from qexp.quant.pytorch.pt2e import Graph, lower, quantize_pt2e, used_state, x86_quantizer
from qexp.quantize import run
from tests.test_fold import randomise_batchnorm

pytest.importorskip("torchao")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = randomise_batchnorm(ResNet(blocks_per_stage=1, widths=(8, 16, 16)))
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(16, 3, 16, 16, generator=generator) for _ in range(2)]
    return model, calibration, torch.randn(5, 3, 16, 16, generator=generator)


@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_converted_graph_is_int8_close_to_float_at_any_batch_size(tiny, observer):
    model, calibration, test = tiny
    converted, images = quantize_pt2e(model, calibration, observer)
    assert images == 32
    targets = {str(node.target) for node in converted.graph.nodes}
    assert any("quantize_per_channel" in t for t in targets) and any("quantize_per_tensor" in t for t in targets)
    reference = model(test)
    graph = Graph(converted)
    assert sqnr_db(reference, graph(test)) > 20  # 8 bits: about 40 dB per layer, less through the network
    torch.testing.assert_close(graph(test[:1]), graph(test)[:1])  # batch 1 runs: the batch dimension is dynamic
    stored = used_state(converted)
    assert {t.dtype for name, t in stored.items() if name.startswith("_frozen_param")} == {torch.int8}
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert sum(t.numel() * t.element_size() for t in stored.values()) < 0.6 * fp32_bytes


def test_observers_without_a_pt2e_counterpart_are_refused(tiny):
    with pytest.raises(ValueError, match="observer='percentile'"):
        x86_quantizer("percentile")
    with pytest.raises(ValueError, match="calibration set is empty"):
        quantize_pt2e(tiny[0], [], "minmax")


def test_lowered_model_agrees_with_the_reference_graph(tiny):
    model, calibration, test = tiny
    converted, _ = quantize_pt2e(model, calibration, "minmax")
    lowered = lower(converted, test)
    expected = Graph(converted)(test)
    got = lowered(test)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.8
    assert sqnr_db(expected, got) > 20


def test_pt2e_cells_through_the_entry_point(compose_in, weights_file):
    base = ["data=synthetic", f"checkpoint={weights_file}", "quant=torch_ptq", "quant.flow=pt2e"]
    ok = run(compose_in("quantize", [*base, "bits=8"]))
    assert ok["status"] == "ok", ok["reason"]
    assert ok["flow"] == "pt2e" and abs(ok["top1"] - ok["pt2e_reference_top1"]) <= 2.0
    assert ok["size_bytes"] < 0.4 * ok["fp32_size_bytes"] and ok["compile_seconds"] > 0
    assert not math.isnan(ok["export_calibrate_convert_seconds"])
    for overrides, reason in ((["bits=4"], "int8 only"), (["observer=percentile"], "no percentile observer")):
        cell = run(compose_in("quantize", [*base, *overrides]))
        assert cell["status"] == "unsupported" and reason in cell["reason"]
