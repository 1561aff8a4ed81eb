import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from qexp.anatomy import run
from qexp.cells.evaluate import sqnr_db
from qexp.cells.result import QUANTIZED_MODEL
from qexp.cells.weights import load_weights
from qexp.errors import QexpError
from qexp.models import resnet20
from qexp.quant import PTQConfig, layer_names, ptq_config, quantize_model
from qexp.quant.core.observers import OBSERVERS, mse_range
from qexp.report.anatomy import (
    LabelledModel,
    activation_grids,
    anatomy_figure,
    float_reference,
    layer_inputs,
    layer_sqnr,
    least_sensitive_layer,
    load_cell_model,
    model_label,
    plot_anatomy,
    read_cell,
    representative_channel,
    weight_grids,
)
from tests.conftest import compose_config, run_module
from tests.test_ptq import batches, tiny_resnet


def test_each_weight_range_is_what_the_observer_chooses_and_what_our_ptq_quantizes_with():
    model = tiny_resnet()
    weight = float_reference(model, equalize=False).get_submodule("layer1.0.conv1").weight.detach()
    tensor = weight_grids("layer1.0.conv1", weight, PTQConfig(4, 4), [4, 2])
    channel = representative_channel(weight)
    assert tensor.channel == channel and tensor.channels == 8 and torch.equal(tensor.values, weight[channel].flatten())
    extents = weight.flatten(1).abs().amax(1)
    assert (extents < extents[channel]).sum() == 3  # the median of 8 channels: 3 below, 4 above
    dead = weight.clone()
    dead[extents.argsort()[:5]] = 0  # five dead channels, as a bn2 scale of 0 folds them: the median of the rest
    assert representative_channel(dead) == int(extents.argsort()[6])
    rows = weight.flatten(1)
    expected = {
        "minmax": lambda bits: (rows.amin(1), rows.amax(1)),
        "percentile": lambda bits: tuple(torch.quantile(rows, torch.tensor([1e-4, 1 - 1e-4]), dim=1)),
        "mse": lambda bits: mse_range(rows, None, bits, symmetric=True),
    }
    assert [(g.bits, g.observer) for g in tensor.grids] == [(b, o) for b in (4, 2) for o in OBSERVERS]
    for grid in tensor.grids:
        low, high = expected[grid.observer](grid.bits)
        assert (grid.low, grid.high) == pytest.approx((float(low[channel]), float(high[channel])))
        quantized, _ = quantize_model(model, PTQConfig(grid.bits, 8, observer=grid.observer), batches(1))
        assert grid.scale == float(quantized.get_submodule("layer1.0.conv1").weight_quantizer.scale[channel])
        qmax = 2 ** (grid.bits - 1) - 1  # the narrow signed grid: 15 levels at 4 bits, ternary at 2
        assert grid.levels == pytest.approx([k * grid.scale for k in range(-qmax, qmax + 1)])
        assert grid.levels[-1] == pytest.approx(max(abs(grid.low), abs(grid.high)))
    sqnr = {(g.bits, g.observer): g.sqnr_db for g in tensor.grids}
    assert all(sqnr[2, observer] < sqnr[4, observer] - 6 for observer in OBSERVERS)  # 4 -> 2 bits: far noisier
    assert sqnr[2, "mse"] >= sqnr[2, "minmax"]  # the range that minimises the error has less of it
    per_tensor = weight_grids("conv1", weight, PTQConfig(4, 4, granularity="per_tensor"), [2])
    assert per_tensor.channel is None and per_tensor.grids[0].high == pytest.approx(float(weight.max()))


def test_each_activation_range_is_what_calibration_gives_the_layers_input_quantizer():
    model, calibration = tiny_resnet(), batches(1)
    inputs = layer_inputs(float_reference(model, equalize=False), "layer2.0.conv1", calibration)
    assert [len(x) for x in inputs] == [32, 32]
    tensor = activation_grids("layer2.0.conv1", inputs, PTQConfig(4, 4), [4, 2])
    values = torch.cat(inputs)
    assert float(tensor.counts.sum()) == values.numel()  # the histogram the observers keep: every value counted
    assert tensor.values.min() >= values.min() and tensor.values.max() <= values.max()
    for grid in tensor.grids:
        quantized, _ = quantize_model(model, PTQConfig(8, grid.bits, observer=grid.observer), calibration)
        quantizer = quantized.get_submodule("layer2.0.conv1").input_quantizer.quantizer  # its producer's shared grid
        assert (grid.scale, grid.zero_point) == (float(quantizer.scale), float(quantizer.zero_point))
        assert (grid.low, grid.high) == tuple(float(v) for v in quantizer.observer.clip_range())
        assert len(grid.levels) == 2**grid.bits and grid.levels[0] == pytest.approx(0.0, abs=1e-6)  # after ReLU
    minmax = next(grid for grid in tensor.grids if grid.observer == "minmax")
    assert (minmax.low, minmax.high) == (float(values.min()), float(values.max()))
    with pytest.raises(ValueError, match="activations of 'fc' is empty"):
        activation_grids("fc", [], PTQConfig(4, 4), [4])


def test_a_layer_before_any_quantizer_has_infinite_sqnr_and_every_layer_loses_from_4_to_2_bits():
    model, calibration, test = tiny_resnet(), batches(1), batches(2)
    reference = float_reference(model, equalize=False)
    names = layer_names(model)
    one, _ = quantize_model(model, PTQConfig(4, 4), calibration, only=["layer2.0.conv1"])
    w4, _ = quantize_model(model, PTQConfig(4, 4), calibration)
    w2, _ = quantize_model(model, PTQConfig(2, 4), calibration)
    labelled = [LabelledModel(label, "W4A4", m, reference) for label, m in (("one", one), ("w4", w4), ("w2", w2))]
    rows = pd.DataFrame(layer_sqnr(labelled, test))
    assert len(rows) == 3 * len(names) and list(rows["layer"][: len(names)]) == names
    sqnr = rows.pivot(index="layer", columns="model", values="sqnr_db").loc[names]
    before = names.index("layer2.0.conv1")
    assert all(math.isinf(value) for value in sqnr["one"].iloc[:before])
    assert all(math.isfinite(value) for value in sqnr["one"].iloc[before:])
    assert (sqnr["w2"] < sqnr["w4"]).all()
    with torch.no_grad():  # the logits' SQNR, summed batch by batch, is evaluate.sqnr_db of all of them
        logits = [torch.cat([network(batch) for batch in test]) for network in (reference, w2)]
    assert sqnr.loc["fc", "w2"] == pytest.approx(sqnr_db(*logits), rel=1e-5)


def test_the_figure_has_a_panel_per_tensor_and_width_and_one_per_setting(tmp_path: Path):
    model, calibration = tiny_resnet(), batches(1)
    reference = float_reference(model, equalize=False)
    weights = [(weight_grids(name, reference.get_submodule(name).weight, PTQConfig(4, 4), [4, 2]), role)
               for name, role in (("conv1", "the stem"), ("layer3.0.conv2", "insensitive"))]  # fmt: skip
    inputs = layer_inputs(reference, "layer1.0.conv1", calibration)
    activation = (activation_grids("layer1.0.conv1", inputs, PTQConfig(4, 4), [4, 2]), "")
    models = [LabelledModel(f"m{bits}", f"W{bits}A4", quantize_model(model, PTQConfig(bits, 4), calibration)[0],
                            reference) for bits in (4, 2)]  # fmt: skip
    sqnr = layer_sqnr(models, batches(2, count=1))
    figure = anatomy_figure(weights, activation, sqnr, [4, 2])
    axes = figure.get_axes()
    assert len(axes) == 3 * 2 * 2 + 2  # a histogram and its observer strip per tensor and width; two SQNR panels
    assert [ax.get_title() for ax in axes[-2:]] == [
        "W4A4: each layer's output vs FP32 (validation images)", "W2A4: each layer's output vs FP32 (validation images)"
    ]  # fmt: skip
    assert axes[1].get_yticklabels()[0].get_text().startswith("minmax · ")
    assert len(anatomy_figure(weights, activation, [], [2]).get_axes()) == 3 * 2  # no model: the ranges alone
    path = plot_anatomy(weights, activation, sqnr, [4, 2], tmp_path / "report")
    assert path == tmp_path / "report" / "anatomy.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_that_kept_its_model_loads_back_with_the_same_outputs(tmp_path: Path):
    cfg = compose_config("quantize", ["data=synthetic", "bits=2", "quant.a_bits=4", "observer=mse",
                                      "quant.reconstruct=block", "quant.reconstruction.steps=2"], tmp_path)  # fmt: skip
    quant = OmegaConf.to_container(cfg.quant, resolve=True)
    model = tiny_resnet()
    quantized, _ = quantize_model(model, ptq_config(cfg.quant), batches(1))
    cell = {"status": "ok", "quant": "custom_ptq", "observer": "mse", "w_bits": 2, "a_bits": 4,
            "recovery": "BRECQ+LSQ+QDrop 2 steps, 0.125 held out", "config": {"quant": quant}}  # fmt: skip
    (tmp_path / "result.json").write_text(json.dumps(cell))
    with pytest.raises(QexpError, match="did not keep its quantized model"):
        read_cell(tmp_path)
    torch.save(quantized.state_dict(), tmp_path / QUANTIZED_MODEL)  # what the proposed qexp.quantize hook writes
    loaded = load_cell_model(model, tmp_path, read_cell(tmp_path))
    test = batches(2)[0]
    with torch.no_grad():
        assert torch.equal(loaded(test), quantized(test))
    assert model_label(cell) == "ours · mse · BRECQ+LSQ+QDrop 2 steps, 0.125 held out"
    assert model_label({**cell, "quant": "qat", "recovery": None}) == "QAT · mse"
    edges = model_label({**cell, "recovery": None, "first_last_bits": 8})
    assert edges == "ours · mse · round-to-nearest · first/last 8 bit"
    torch.save(tiny_resnet().state_dict(), tmp_path / QUANTIZED_MODEL)  # a float model's file: not this cell's
    with pytest.raises(QexpError, match="does not fit its config's structure"):
        load_cell_model(model, tmp_path, cell)
    (tmp_path / "result.json").write_text(json.dumps({**cell, "status": "failed"}))
    with pytest.raises(QexpError, match="expected a finished \\(ok\\) cell"):
        read_cell(tmp_path)


def test_the_insensitive_layer_is_the_cheapest_at_the_lowest_width_of_this_checkpoint_only():
    rows = [("conv1", 2, "weights", 28.0, "a.pt"), ("layer1.2.conv2", 2, "weights", 0.3, "a.pt"),
            ("layer2.1.conv2", 2, "weights+input", 0.1, "a.pt"), ("layer3.2.conv2", 4, "weights", 0.0, "a.pt"),
            ("fc", 2, "weights", 0.0, "other.pt")]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["layer", "bits", "quantized", "drop", "checkpoint"]).assign(recovery="")
    assert least_sensitive_layer(frame, {"checkpoint": "a.pt", "recovery": ""}) == ("layer1.2.conv2", 2)
    with pytest.raises(QexpError, match=r"no rows of .*'checkpoint': 'b\.pt'"):
        least_sensitive_layer(frame, {"checkpoint": "b.pt"})


def test_the_entry_point_draws_its_own_curves_and_a_cells(weights_file: Path, tmp_path: Path):
    small = ["data=synthetic", f"checkpoint={weights_file}", "sqnr_images=32", "insensitive_layer=layer3.2.conv2"]
    model = resnet20()
    load_weights(weights_file, model, "resnet20")
    cell_cfg = compose_config("quantize", ["data=synthetic", "bits=2", "quant.a_bits=4", "observer=mse"], tmp_path)
    calibration = [torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))]
    quantized, _ = quantize_model(model.eval(), ptq_config(cell_cfg.quant), calibration)
    cell = tmp_path / "cell"
    cell.mkdir()
    torch.save(quantized.state_dict(), cell / QUANTIZED_MODEL)
    quant = OmegaConf.to_container(cell_cfg.quant, resolve=True)
    fields = {"status": "ok", "quant": "custom_ptq", "observer": "mse", "w_bits": 2, "a_bits": 4, "recovery": None,
              "checkpoint": str(weights_file), "config": {"quant": quant}}  # fmt: skip
    (cell / "result.json").write_text(json.dumps(fields))
    out = tmp_path / "anatomy"
    record = run(compose_config("anatomy", [*small, "settings=[[4,4]]", f"cells=['{cell}']"], out))
    assert {(row["model"], row["setting"]) for row in record["sqnr"]} == {
        ("ours · mse · round-to-nearest", "W4A4"), ("ours · mse · round-to-nearest", "W2A4")
    }  # fmt: skip
    assert len(record["sqnr"]) == 2 * 20 and record["sqnr_images"] == 32 and record["calib_images"] == 128
    assert len(record["ranges"]) == 3 * 2 * 3  # three tensors, two widths, three observers
    layers = {"sensitive_layer": "conv1", "insensitive_layer": "layer3.2.conv2", "activation": "layer1.0.conv1"}
    assert record["layers"] == layers
    assert json.loads((out / "anatomy.json").read_text())["ranges"] == record["ranges"]
    assert (out / "anatomy.png").is_file()
    (cell / "result.json").write_text(json.dumps({**fields, "checkpoint": "elsewhere.pt"}))
    with pytest.raises(QexpError, match=r"quantized checkpoint='elsewhere\.pt'"):
        run(compose_config("anatomy", [*small, f"cells=['{cell}']"], out))
    with pytest.raises(QexpError, match=r"activation='layer9\.conv1' is not a layer of the model"):
        run(compose_config("anatomy", [*small, "activation=layer9.conv1"], out))


def test_a_bad_width_is_one_clear_error(tmp_path: Path):
    result = run_module("qexp.anatomy", "data=synthetic", "bits=[4,1]", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "bits=1 is not supported" in result.stderr and "Traceback" not in result.stderr
