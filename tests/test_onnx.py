import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qexp.cells.cache import cell_key
from qexp.data import IMAGENET_NORMALIZATION, normalize
from qexp.quant import PTQConfig, quantize_model
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.core.modules import FakeQuantize, Mode, QuantLayer, quantizers
from qexp.quant.core.observers import MinMaxObserver
from qexp.quant.export import onnx_runtime, qdq
from qexp.quant.export.packed import exported_weight, integer_export
from qexp.quant.export.qdq import to_onnx
from qexp.quant.unsupported import Unsupported
from qexp.quantize import run
from tests.test_affine import exact_ties, reciprocal_rounding
from tests.test_packed import tied_layer


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """uint8 images: the exported graph standardises them itself."""
    return torch.randint(0, 256, (96, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)


def quantized(model_and_data, images, **config) -> nn.Module:
    model, _, _ = model_and_data
    config = {"w_bits": 8, "a_bits": 8, "observer": "minmax", **config}
    return quantize_model(model, PTQConfig(**config), [normalize(images[:64])])[0]


def simulated_and_exported(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        simulated = model(normalize(images))
    exported = torch.from_numpy(onnx_runtime.logits(onnx_runtime.session(to_onnx(model), threads=1), images))
    return simulated, exported


def output_step(logits: torch.Tensor) -> float:
    """The step of an 8-bit grid spanning the logits: what an int8 output would resolve."""
    return float(logits.max() - logits.min()) / 255


def test_the_float_model_exports_as_the_same_function(model_and_data, images):
    model, _, _ = model_and_data
    folded = fold_batchnorm(model).eval()
    simulated, exported = simulated_and_exported(folded, images)
    torch.testing.assert_close(exported, simulated, atol=1e-4, rtol=1e-4)
    assert to_onnx(folded).opset_import[0].version == 13


def test_the_graph_standardises_its_input_as_the_model_was_trained(model_and_data, images):
    """A foreign model trained on ImageNet-standardised inputs gets those constants in its graph, not CIFAR-10's."""
    model, _, _ = model_and_data
    folded = fold_batchnorm(model).eval()
    graph = to_onnx(folded, IMAGENET_NORMALIZATION)
    exported = torch.from_numpy(onnx_runtime.logits(onnx_runtime.session(graph, threads=1), images))
    with torch.no_grad():
        expected, cifar = folded(normalize(images, IMAGENET_NORMALIZATION)), folded(normalize(images))
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=1e-4)
    assert (exported - cifar).abs().max() > 1e-2  # the constants matter


def test_w8a8_with_shared_grids_runs_on_integer_kernels_and_agrees_within_a_few_steps(model_and_data, images):
    model = quantized(model_and_data, images, shared_activations=True)
    simulated, exported = simulated_and_exported(model, images)
    # The int32 bias at s_x * s_w and the integer kernels' requantization move some activations by one step,
    # which the layers after them carry on: a few output steps at most, the class almost never.
    assert (exported - simulated).abs().max() <= 4 * output_step(simulated)
    assert (exported.argmax(1) == simulated.argmax(1)).float().mean() >= 0.95
    _, kernels = onnx_runtime.session_and_kernels(to_onnx(model), threads=1)
    # Every conv and the classifier; every add but the last, whose sum is pooled in float.
    assert kernels.get("QLinearConv", 0) == 19 and kernels.get("QLinearAdd", 0) == 8
    assert onnx_runtime.integer_kernel_count(kernels) == 19 + 8 + 1


@pytest.mark.parametrize(
    ("config", "opset"),
    [
        ({"w_bits": 4, "a_bits": 4}, 21),
        ({"w_bits": 4, "a_bits": 8, "shared_activations": True}, 21),
        ({"w_bits": 16, "a_bits": 16}, 21),  # float bias: ONNX Runtime's int32 bias at s_x * s_w would overflow
        ({"w_bits": 2, "a_bits": 2, "weight_grid": "full"}, 25),
        ({"w_bits": 8, "a_bits": 8, "granularity": "per_tensor"}, 13),
    ],
)
def test_other_widths_export_on_the_lowest_opset_that_has_them_and_compute_what_we_simulate(
    model_and_data, images, config, opset
):
    model = quantized(model_and_data, images, **config)
    graph = to_onnx(model)
    assert graph.opset_import[0].version == opset
    simulated, exported = simulated_and_exported(model, images)
    # No integer kernel at these widths (8-bit per tensor aside): the runtime dequantizes and computes in float,
    # as our simulation does, with the same rounding (x / s, ties to even): only float summation order can differ.
    assert (exported - simulated).abs().max() <= 4 * output_step(simulated)
    assert (exported.argmax(1) == simulated.argmax(1)).float().mean() >= 0.95


def initializer(graph: onnx.ModelProto, prefix: str) -> np.ndarray:
    """The one initializer whose name starts with ``prefix`` (names end in a counter), as numpy."""
    (tensor,) = [t for t in graph.graph.initializer if t.name.rpartition("_")[0] == prefix]
    return numpy_helper.to_array(tensor)


def test_the_file_holds_our_integers_scales_zero_points_and_biases(model_and_data, images):
    model = quantized(model_and_data, images, shared_activations=False)
    graph = to_onnx(model)
    layer = model.get_submodule("layer2.0.conv1")
    assert isinstance(layer, QuantLayer)
    wq, xq = layer.weight_quantizer, layer.input_quantizer
    stored = initializer(graph, "layer2.0.conv1.weight_q")
    assert stored.dtype == np.int8
    scale = initializer(graph, "layer2.0.conv1.weight_scale")
    np.testing.assert_array_equal(scale, wq.scale.numpy())
    dequantized = stored.astype(np.float32) * scale[:, None, None, None]
    np.testing.assert_array_equal(dequantized, layer.quantized_weight().detach().numpy())  # what the model computes
    assert float(initializer(graph, "layer2.0.conv1.input.scale")) == float(xq.scale)
    assert int(initializer(graph, "layer2.0.conv1.input.zero_point")) == int(xq.zero_point)
    bias = initializer(graph, "layer2.0.conv1.bias_q")  # 8-bit weights and input: int32 at s_x * s_w
    assert bias.dtype == np.int32
    expected = torch.round(layer.layer.bias.double() / (xq.scale.double() * wq.scale.double())).int().numpy()
    np.testing.assert_array_equal(bias, expected)
    # One Q/DQ pair per activation quantizer of ours: a per-reader grid is kept, not merged with its twin.
    quantize_nodes = [node for node in graph.graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantize_nodes) == len(quantizers(model, "activation")) == 38
    assert "one per reader" in graph.graph.doc_string


def test_on_exact_ties_the_file_stores_the_exported_integers_and_runs_the_simulated_activations(images):
    layer = tied_layer(normalize(images[:8]))
    classifier = nn.Sequential(layer, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # a graph's output is N x classes
    stored = initializer(to_onnx(classifier), "0.weight_q")
    np.testing.assert_array_equal(stored, exported_weight(integer_export(classifier), 0).numpy())
    scale = layer.weight_quantizer.scale.numpy()
    np.testing.assert_array_equal(stored * scale[:, None, None, None], layer.quantized_weight().detach().numpy())
    # An activation quantizer's Q/DQ pair, as the exporter emits it, on ONNX Runtime: what our quantizer computes.
    quantizer = FakeQuantize(MinMaxObserver(8, symmetric=False))
    quantizer.scale.fill_(0.0137)  # a grid set by hand, on which PyTorch's rounding moves some ties
    quantizer.zero_point.fill_(37)
    quantizer.mode = Mode.QUANTIZE
    ties = exact_ties(quantizer.scale.reshape(1), 200, -37, 255 - 37).flatten()
    graph = qdq._Graph()
    output = qdq._quantize_dequantize(graph, "x", quantizer, "activation")
    declared = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [len(ties)]) for name in ("x", output)]
    pair = helper.make_model(
        helper.make_graph(graph.nodes, "pair", declared[:1], declared[1:], graph.initializers),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    (runtime,) = onnx_runtime.session(pair, threads=1).run(None, {"x": ties.numpy()})
    np.testing.assert_array_equal(runtime, quantizer(ties).numpy())
    assert (reciprocal_rounding(ties, quantizer.scale) != torch.round(ties / quantizer.scale)).sum() >= 5


def test_integers_are_stored_at_their_width(model_and_data, images):
    model, _, _ = model_and_data
    fp32 = to_onnx(fold_batchnorm(model)).ByteSize()
    sizes = {bits: to_onnx(quantized(model_and_data, images, w_bits=bits, a_bits=8)).ByteSize() for bits in (8, 4)}
    assert sizes[8] < 0.3 * fp32 and sizes[4] < 0.6 * sizes[8]  # packed, not one varint per value
    stored = initializer(to_onnx(quantized(model_and_data, images, w_bits=4, a_bits=8)), "layer2.0.conv1.weight_q")
    assert str(stored.dtype) == "int4" and stored.min() >= -7 and stored.max() <= 7


def test_what_onnx_cannot_carry_is_unsupported_with_the_reason(model_and_data, images):
    with pytest.raises(Unsupported, match=r"quantized to 3 bits; ONNX has integer types of \[2, 4, 8, 16\] bits"):
        to_onnx(quantized(model_and_data, images, w_bits=3, a_bits=8))
    with pytest.raises(Unsupported, match=r"1 \(MaxPool2d\) has no ONNX export"):
        to_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)))
    signed = FakeQuantize(MinMaxObserver(8, symmetric=True))  # a narrow signed activation grid: [-127, 127]
    signed.mode = Mode.QUANTIZE
    with pytest.raises(Unsupported, match=r"grid \[-127, 127\] does not fill the range \[-128, 127\]"):
        to_onnx(nn.Sequential(signed, nn.Conv2d(3, 4, 3)))
    signed.mode = Mode.OBSERVE
    with pytest.raises(Unsupported, match=r"quantizers \['0'\] are still observing; only a frozen model exports"):
        to_onnx(nn.Sequential(signed, nn.Conv2d(3, 4, 3)))


def test_a_cell_with_export_onnx_writes_the_file_and_measures_it_on_onnx_runtime(compose_in, weights_file: Path):
    cfg = compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "bits=8", "export=onnx"])
    result = run(cfg)
    assert result["status"] == "ok" and result["onnx_status"] == "ok", result["reason"]
    path = Path(cfg.output_dir) / result["onnx_file"]
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert result["onnx_bytes"] == path.stat().st_size
    assert result["onnx_agreement"] >= 90 and result["onnx_integer_kernels"] > 0  # the file is what ORT ran
    assert result["onnx_opset"] == 13 and result["onnx_note"] is None
    assert all(result[f"onnx{kind}_ms_batch{size}"] > 0 for kind in ("", "_fp32") for size in (1, 256))
    assert json.loads((Path(cfg.output_dir) / "result.json").read_text())["onnx_kernels"] == result["onnx_kernels"]


def test_the_fp32_cell_exports_the_float_model_and_times_it_once(compose_in, weights_file: Path):
    result = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "quant=none", "export=onnx"]))
    assert result["onnx_status"] == "ok" and result["onnx_top1"] == result["top1"]
    assert result["onnx_integer_kernels"] == 0
    assert [result[f"onnx_ms_batch{size}"] for size in (1, 256)] == [
        result[f"onnx_fp32_ms_batch{size}"] for size in (1, 256)
    ]  # its graph is the float model's


def test_a_model_that_is_not_ours_is_unsupported_and_an_unknown_format_is_the_users_error(
    compose_in, weights_file: Path
):
    base = ["data=synthetic", f"checkpoint={weights_file}"]
    torch_cell = run(compose_in("quantize", [*base, "quant=torch_ptq", "export=onnx"]))
    assert torch_cell["status"] == "ok" and torch_cell["onnx_status"] == "unsupported"
    assert "only our own models export" in torch_cell["onnx_reason"]
    bad = run(compose_in("quantize", [*base, "export=tflite"]))
    assert bad["status"] == "failed" and bad["user_error"]
    assert bad["reason"] == "export='tflite' is not known; expected null (no export) or 'onnx'."


def test_an_exported_cell_is_the_same_cell_and_a_finished_one_is_exported_when_asked(compose_in, weights_file: Path):
    base = ["data=synthetic", f"checkpoint={weights_file}", "bits=8"]
    plain = compose_in("quantize", base)
    exported = compose_in("quantize", [*base, "export=onnx"])
    assert cell_key(plain, weights_file) == cell_key(exported, weights_file)
    first = run(plain)
    assert "onnx_status" not in first
    second = run(exported)  # the plain cell is done, but not exported: it runs again
    assert second["onnx_status"] == "ok"
    written = (Path(exported.output_dir) / "result.json").stat().st_mtime_ns
    assert run(exported) == second  # now it is done: skipped, nothing rewritten
    assert (Path(exported.output_dir) / "result.json").stat().st_mtime_ns == written
