import json
from pathlib import Path

import pytest

from qexp.report import report
from qexp.sensitivity import run
from tests.conftest import run_module
from tests.test_report import fake_cell


def test_every_layer_is_measured_alone_and_the_report_shows_it(compose_in, weights_file: Path, tmp_path: Path):
    record = run(compose_in("sensitivity", ["data=synthetic", f"checkpoint={weights_file}", "bits=[2]"]))
    rows = record["rows"]
    assert len(rows) == 20 * 2
    assert rows[0]["layer"] == "conv1" and rows[-1]["layer"] == "fc"
    assert {(r["quantized"], r["a_bits"]) for r in rows} == {("weights", 16), ("weights+input", 2)}
    assert all(r["drop"] == pytest.approx(r["fp32_top1"] - r["top1"]) for r in rows)
    assert rows[0]["sqnr_db"] < 40 and rows[1]["sqnr_db"] < rows[0]["sqnr_db"]  # conv1 at W2, then W2A2
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["rows"] == rows and saved["data"] == "synthetic"
    fake_cell(tmp_path / "grid", "0", "2026-01-01T00:00:00", quant="none", w_bits=32, a_bits=32, observer="none")
    report([tmp_path], tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert "## Per-layer sensitivity" in text and "| layer | W2 | W2A2 |" in text
    assert text.count("| layer1.0.conv1 |") == 1
    assert (tmp_path / "report" / "layer_sensitivity.png").is_file()


def test_a_bad_width_is_one_clear_error(tmp_path: Path):
    result = run_module("qexp.sensitivity", "data=synthetic", "bits=[3,1]", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "bits=1 is not supported" in result.stderr and "Traceback" not in result.stderr
