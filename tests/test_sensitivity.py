import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qexp.data import Split, normalize
from qexp.models.resnet import BasicBlock
from qexp.quant import PTQConfig
from qexp.quant.core.modules import QuantLayer
from qexp.quant.custom import reconstruct as reconstruction
from qexp.quant.custom.reconstruct import ReconstructionConfig
from qexp.report import report
from qexp.sensitivity import layer_sensitivity, run
from tests.conftest import compose_config, run_module
from tests.test_ptq import batches, tiny_resnet
from tests.test_report import fake_cell


def test_every_layer_is_measured_alone_and_the_report_shows_it(compose_in, weights_file: Path, tmp_path: Path):
    small = "data.synthetic_sizes=[512,128]"  # 128 test images: 40 probes each score the test split
    record = run(compose_in("sensitivity", ["data=synthetic", small, f"checkpoint={weights_file}", "bits=[2]"]))
    rows = record["rows"]
    assert len(rows) == 20 * 2
    assert rows[0]["layer"] == "conv1" and rows[-1]["layer"] == "fc"
    assert {(r["quantized"], r["a_bits"]) for r in rows} == {("weights", 16), ("weights+input", 2)}
    assert all(r["drop"] == pytest.approx(r["fp32_top1"] - r["top1"]) for r in rows)
    assert rows[0]["sqnr_db"] < 40 and rows[1]["sqnr_db"] < rows[0]["sqnr_db"]  # conv1 at W2, then W2A2
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["rows"] == rows and saved["data"] == "synthetic" and saved["weight_grid"] is None
    fake_cell(tmp_path / "grid", "0", "2026-01-01T00:00:00", quant="none", w_bits=32, a_bits=32, observer="none")
    report([tmp_path], tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert "## Per-layer sensitivity" in text and "| layer | W2 | W2A2 |" in text
    assert text.count("| layer1.0.conv1 |") == 1
    assert (tmp_path / "report" / "layer_sensitivity.png").is_file()
    full = tmp_path / "full"  # the full-range weight grid: columns of their own, not a rerun of the narrow ones
    run(compose_config("sensitivity", ["data=synthetic", small, f"checkpoint={weights_file}", "bits=[2]",
                                       "quant.weight_grid=full"], full))  # fmt: skip
    report([tmp_path], tmp_path / "both")
    assert "| layer | W2 | W2 full | W2A2 | W2A2 full |" in (tmp_path / "both" / "results.md").read_text()


def test_a_bad_width_is_one_clear_error(tmp_path: Path):
    result = run_module("qexp.sensitivity", "data=synthetic", "bits=[3,1]", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "bits=1 is not supported" in result.stderr and "Traceback" not in result.stderr


def test_with_block_reconstruction_a_layer_in_a_block_is_fitted_to_the_block_and_its_row_says_so(monkeypatch):
    fitted = []
    fit = reconstruction.reconstruct_unit

    def recording(unit, *args):
        fitted.append(unit)
        return fit(unit, *args)

    monkeypatch.setattr(reconstruction, "reconstruct_unit", recording)
    generator = torch.Generator().manual_seed(3)
    test = Split(torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=generator), torch.arange(16) % 10)
    datamodule = SimpleNamespace(
        splits={"test": test}, eval_batch_size=16, calibration_batches=lambda _: batches(1), normalize=normalize
    )
    block = ReconstructionConfig("block", steps=3, held_out=0.25)
    configs = {(2, "weights"): PTQConfig(2, 16, reconstruction=block), (2, "round to nearest"): PTQConfig(2, 16)}
    rows = layer_sensitivity(tiny_resnet(), configs, datamodule)
    units = {(row["layer"], row["quantized"]): row["reconstruction_unit"] for row in rows}
    assert [unit for (_, what), unit in units.items() if what == "weights"] == [
        "conv1", "layer1.0", "layer1.0", "layer2.0", "layer2.0", "layer3.0", "layer3.0", "fc"
    ]  # fmt: skip
    assert all(unit is None for (_, what), unit in units.items() if what == "round to nearest")
    assert [type(unit).__name__ for unit in fitted] == ["QuantLayer", *["BasicBlock"] * 6, "QuantLayer"]
    probes = [unit for unit in fitted if isinstance(unit, BasicBlock)]
    assert all(sum(isinstance(m, QuantLayer) for m in unit.modules()) == 1 for unit in probes)  # one layer each
