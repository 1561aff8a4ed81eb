import json
from pathlib import Path

import pandas as pd

from qexp.report import main, report


def fake_cell(root: Path, name: str, finished: str, **fields) -> None:
    record = {
        "quant": "custom_ptq", "w_bits": 8, "a_bits": 8, "bits": 8, "observer": "minmax",
        "granularity": "per_channel", "first_last_bits": None, "status": "ok", "reason": "", "top1": 90.0,
        "fp32_top1": 91.0, "size_bytes": 80_000, "fp32_size_bytes": 1_100_000, "calib_images": 1024,
        "seconds": 1.0, "checkpoint": "w.pt", "data": "synthetic", "finished_at": finished,
    }  # fmt: skip
    record.update(fields)
    (root / name).mkdir(parents=True)
    (root / name / "result.json").write_text(json.dumps(record))


def test_report_keeps_the_newest_duplicate_and_shows_failed_cells(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", quant="none", w_bits=32, a_bits=32, observer="none", top1=91.0)
    fake_cell(sweep, "1", "2026-01-01T00:00:01", top1=80.0)
    fake_cell(sweep, "2", "2026-01-01T00:00:02", top1=90.5)  # the same cell again: this one wins
    fake_cell(sweep, "3", "2026-01-01T00:00:03", w_bits=2, a_bits=2, status="failed", reason="boom", top1=None)
    fake_cell(sweep, "4", "2026-01-01T00:00:04", quant="torch_ptq", w_bits=4, a_bits=4, status="unsupported",
              reason="int8 only", top1=None)  # fmt: skip
    fake_cell(sweep, "5", "2026-01-01T00:00:05", w_bits=4, a_bits=8, top1=85.0)
    out = tmp_path / "report"
    frame = report([sweep], out)
    assert len(frame) == 5
    csv = pd.read_csv(out / "results.csv")
    assert sorted(csv["top1"].dropna().tolist()) == [85.0, 90.5, 91.0]
    table = (out / "results.md").read_text()
    assert "| ours · minmax |  | 90.50 (-0.50) |  | failed |" in table
    assert "ours · minmax · A8" in table and "85.00 (-6.00)" in table
    assert "**failed**: boom" in table and "**unsupported**: int8 only" in table
    assert {p.name for p in out.glob("*.png")} == {
        "accuracy_vs_bits.png",
        "accuracy_vs_size.png",
        "weights_vs_activations.png",
    }
    first = (out / "results.md").read_text()
    report([sweep], out)
    assert (out / "results.md").read_text() == first  # idempotent


def test_report_command_rejects_missing_directories(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "do not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no result.json" in capsys.readouterr().err


def test_recovery_rows_and_mixed_precision_cells_are_shown_apart(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", w_bits=4, a_bits=4, top1=70.0)
    fake_cell(sweep, "1", "2026-01-01T00:00:01", w_bits=4, a_bits=4, top1=89.0, recovery="BRECQ+QDrop 2000 steps")
    fake_cell(sweep, "2", "2026-01-01T00:00:02", w_bits=2, a_bits=8, top1=88.0, average_bits=3.0,
              layer_bits={"conv1": [8, 8], "a": [4, 8], "b": [2, 8], "c": [2, 8]})  # fmt: skip
    report([sweep], tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert "| ours · minmax |  |  | 70.00 |  |" in text
    assert "| ours · minmax · BRECQ+QDrop 2000 steps |  |  | 89.00 |  |" in text
    assert "| minmax | 3 | A8 | 1× 8, 1× 4, 2× 2 | 88.00 | 78 |" in text
