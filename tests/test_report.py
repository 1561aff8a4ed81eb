import json
from pathlib import Path

import pandas as pd
import pytest

from qexp.report import main, report
from qexp.report.cells import collect, merge, read_results, recipe, variant
from qexp.report.tables import onnx_table, recovery_table, results_markdown, size_table


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
        "glance.png",
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
    assert "| minmax | 3 | A8 | 1× 8, 1× 4, 2× 2 | 88.00 | 78 |  |" in text  # no uniform W2A8 cell to compare
    assert "| + BRECQ+QDrop 2000 steps | **89.00** | 1 |" in text  # the recovery table, against round-to-nearest
    assert "| round-to-nearest | 70.00 | 1 |" in text


def correct(images: int, right: set[int]) -> str:
    """``test_correct`` of a cell that gets exactly the images in ``right`` right."""
    import torch

    from qexp.cells.evaluate import pack_correct

    return pack_correct(torch.tensor([i in right for i in range(images)]))


def paired_sweep(root: Path) -> None:
    """FP32, ours and PyTorch at W8 on the same 200 images, with every field that later runs record."""
    fp32 = set(range(180))  # 90 %
    common = {"test_images": 200, "extra_test_label": "original", "extra_test_stderr": 1.12}
    fake_cell(root, "0", "2026-01-01T00:00:00", quant="none", w_bits=32, a_bits=32, observer="none", top1=90.0,
              size_bytes=1_100_000, payload_bytes=1_000_000, test_correct=correct(200, fp32), extra_test_top1=85.0,
              **common)  # fmt: skip
    # ours loses images 0-5 and gains none: 6 discordant images, all one way, p = 2 / 2**6
    fake_cell(root, "1", "2026-01-01T00:00:01", top1=87.0, payload_bytes=70_000,
              test_correct=correct(200, fp32 - set(range(6))), extra_test_top1=84.0, **common)  # fmt: skip
    # PyTorch loses image 0 and gains image 190: one each way, p = 1
    fake_cell(root, "2", "2026-01-01T00:00:02", quant="torch_ptq", flow="fx", top1=90.0, size_bytes=90_000,
              payload_bytes=71_000, test_correct=correct(200, (fp32 - {0}) | {190}), extra_test_top1=83.0,
              **common)  # fmt: skip


def test_new_fields_add_columns_and_differences_are_judged_by_mcnemar(tmp_path: Path):
    paired_sweep(tmp_path / "sweep")
    report([tmp_path / "sweep"], tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert "One test image is 0.5 points of top-1 (200 test images)" in text
    assert "standard error of FP32's 90.00 % is 2.12 points" in text
    assert "| ours · minmax · W8 | FP32 | -3.00 | 6 | 0 | 0.031 | loss |" in text
    assert "| PyTorch · minmax · W8 | FP32 | +0.00 | 1 | 1 | 1.000 | within noise |" in text
    assert "| ours · minmax · W8 | PyTorch · minmax · W8 | -3.00 | 6 | 0 | 0.031 | loss |" in text
    header = "|  | bits | test top-1 (%) | vs FP32 | top-1 on original (%, ± 1 s.e.) | size (KiB) | payload (KiB) |"
    assert header in text
    assert "| FP32 | fp32 | 90.00 |  | 85.00 ± 1.12 | 1074 | 977 |" in text
    assert "| ours, round-to-nearest · minmax | W8A8 | 87.00 | -3.00, loss | 84.00 ± 1.12 | 78 | 68 |" in text
    assert "## Top-1 (%) on original, ± one standard error" in text and "|  | 83.00 ± 1.12 |  |  |" in text
    assert "## Size of the stored model (KiB: serialised file / payload)" in text and "|  | 78 / 68 |  |  |" in text


def test_without_the_new_fields_their_columns_are_left_out(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", quant="none", w_bits=32, a_bits=32, observer="none", top1=86.94)
    fake_cell(sweep, "1", "2026-01-01T00:00:01", top1=63.13)
    report([sweep], tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert "|  | bits | test top-1 (%) | vs FP32 | size (KiB) |" in text
    assert "| ours, round-to-nearest · minmax | W8A8 | 63.13 | -23.81 | 78 |" in text
    assert "payload" not in text and "second test" not in text and "±" not in text
    assert "do not record per-image correctness" in text
    # the number of test images is read off the top-1 values: 63.13 % is 6313 of 10 000
    assert "One test image is 0.01 points of top-1 (10,000 test images)" in text


def test_the_report_from_its_results_csv_is_the_report_from_the_sweeps(tmp_path: Path):
    sweep = tmp_path / "sweep"
    paired_sweep(sweep)
    fake_cell(sweep, "3", "2026-01-01T00:00:03", w_bits=2, a_bits=8, top1=50.0, average_bits=3.0, first_last_bits=8,
              layer_bits={"conv1": [8, 8], "fc": [2, 8]})  # fmt: skip
    fake_cell(sweep, "4", "2026-01-01T00:00:04", w_bits=4, a_bits=4, top1=70.0, recovery="CLE")
    report([sweep], tmp_path / "a")
    assert main(["--from-csv", str(tmp_path / "a" / "results.csv"), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "results.md").read_text() == (tmp_path / "a" / "results.md").read_text()
    assert (tmp_path / "b" / "results.csv").read_bytes() == (tmp_path / "a" / "results.csv").read_bytes()
    assert {p.name for p in (tmp_path / "b").glob("*.png")} == {p.name for p in (tmp_path / "a").glob("*.png")}


def test_the_command_takes_sweeps_or_a_results_csv(tmp_path: Path, capsys):
    (tmp_path / "sweep").mkdir()
    assert main([str(tmp_path / "sweep"), "--from-csv", "r.csv", "--out", str(tmp_path / "r")]) == 2
    assert main(["--out", str(tmp_path / "r")]) == 2
    assert "or both" in capsys.readouterr().err
    assert main(["--from-csv", str(tmp_path / "none.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_newer_sweeps_add_their_cells_to_a_results_csv_of_the_same_checkpoint(tmp_path: Path, capsys):
    committed = tmp_path / "committed"
    fake_cell(committed, "0", "2026-01-01T00:00:00", quant="none", w_bits=32, a_bits=32, observer="none", top1=91.0)
    fake_cell(committed, "1", "2026-01-01T00:00:01", w_bits=4, a_bits=4, top1=70.0)
    report([committed], tmp_path / "report")
    later = tmp_path / "later"
    fake_cell(later, "0", "2026-01-02T00:00:00", w_bits=4, a_bits=4, top1=71.0, cell_key="c" * 64)  # run again
    fake_cell(later, "1", "2026-01-02T00:00:01", quant="qat", w_bits=4, a_bits=4, top1=89.0)
    csv = str(tmp_path / "report" / "results.csv")
    assert main(["--from-csv", csv, str(later), "--out", str(tmp_path / "report")]) == 0
    merged = pd.read_csv(tmp_path / "report" / "results.csv")
    assert sorted(zip(merged["quant"], merged["top1"], strict=True)) == [
        ("custom_ptq", 71.0),
        ("none", 91.0),
        ("qat", 89.0),
    ]
    other = tmp_path / "other"
    fake_cell(other, "0", "2026-01-03T00:00:00", w_bits=8, a_bits=8, top1=80.0, fp32_top1=85.0)
    assert main(["--from-csv", csv, str(other), "--out", str(tmp_path / "report")]) == 2
    assert "different checkpoints or test splits" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "report" / "results.csv")) == 3  # nothing written


def test_merge_knows_a_cell_by_its_key_and_a_newer_run_of_its_settings_replaces_it(tmp_path: Path):
    old, new, newer = "2026-01-01T00:00:00", "2026-01-02T00:00:00", "2026-01-03T00:00:00"
    committed = tmp_path / "committed"
    fake_cell(committed, "fp32", old, quant="none", w_bits=32, a_bits=32, observer="none", top1=91.0, cell_key="0" * 64)
    fake_cell(committed, "a", old, top1=80.0, cell_key="a" * 64)
    fake_cell(committed, "b", old, w_bits=4, a_bits=4, top1=70.0, cell_key="b" * 64)
    fake_cell(committed, "c", old, w_bits=2, a_bits=2, first_last_bits=8, top1=30.0)  # written before cell keys
    fake_cell(committed, "q", old, quant="qat", w_bits=4, a_bits=4, top1=85.0, cell_key="q" * 64)
    fake_cell(committed, "x", newer, observer="mse", top1=88.0, cell_key="x" * 64, onnx_status="ok")  # exported
    collect([committed]).to_csv(tmp_path / "results.csv", index=False)
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "a", new, top1=81.0, cell_key="a" * 64)  # the same cell run again
    fake_cell(sweep, "c", new, w_bits=2, a_bits=2, first_last_bits=8, top1=31.0, cell_key="c" * 64)
    fake_cell(sweep, "q", new, quant="qat", w_bits=4, a_bits=4, top1=86.0, cell_key="r" * 64)  # a newer schema
    fake_cell(sweep, "q1", new, quant="qat", w_bits=4, a_bits=4, top1=40.0, cell_key="s" * 64)  # a 1-epoch check
    fake_cell(sweep, "x", new, observer="mse", top1=87.0, cell_key="x" * 64)  # older than its exported twin
    fake_cell(sweep, "b", "2025-12-31T00:00:00", w_bits=4, a_bits=4, top1=60.0, cell_key="g" * 64)  # stale
    fake_cell(sweep, "o", new, w_bits=4, a_bits=4, top1=75.0, cell_key="o" * 64, checkpoint="other.pt")
    merged = merge(read_results(tmp_path / "results.csv"), collect([sweep]))
    assert sorted(zip(merged["cell_key"].str[0], merged["top1"], strict=True)) == [
        ("0", 91.0),
        ("a", 81.0),
        ("b", 70.0),  # the stale sweep's run of its settings gives way to it
        ("c", 31.0),  # replaces the keyless row of its settings, though that one read 8 bits back as 8.0
        ("o", 75.0),  # another checkpoint file: another cell, beside b
        ("r", 86.0),
        ("s", 40.0),  # within one sweep, other keys stay apart (collect), and both replace q
        ("x", 88.0),
    ]
    assert merged.loc[merged["cell_key"] == "x" * 64, "onnx_status"].item() == "ok"
    again = merge(read_results(tmp_path / "results.csv"), collect([committed]))  # the committed sweep once more
    assert sorted(again["top1"]) == sorted(collect([committed])["top1"])
    fake_cell(sweep, "y", newer, w_bits=8, a_bits=8, observer="percentile", top1=80.0, fp32_top1=85.0)
    with pytest.raises(ValueError, match=r"measured FP32 top-1 \[85.0, 91.0\]: they come from different checkpoints"):
        merge(read_results(tmp_path / "results.csv"), collect([sweep]))


def test_qat_cells_are_a_method_of_their_own_in_every_table(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", quant="none", w_bits=32, a_bits=32, observer="none", top1=91.0,
              size_bytes=1_100_000)  # fmt: skip
    fake_cell(sweep, "1", "2026-01-01T00:00:01", w_bits=4, a_bits=4, top1=70.0)
    fake_cell(sweep, "2", "2026-01-01T00:00:02", quant="qat", w_bits=4, a_bits=4, top1=90.0, seconds=900.0)
    fake_cell(sweep, "3", "2026-01-01T00:00:03", quant="qat", w_bits=2, a_bits=4, top1=85.0, seconds=1200.0,
              recovery="BRECQ 3 steps")  # fmt: skip
    frame = report([sweep], tmp_path / "report")  # QAT and no recovery recipe: the recovery panel has QAT alone
    text = (tmp_path / "report" / "results.md").read_text()
    assert "| QAT · minmax |  |  | 90.00 (-1.00) |  |" in text
    assert "| QAT · minmax | W4A4 | 90.00 | -1.00 | 78 |" in text  # at a glance
    assert "| recipe | W4A4 | W2A4 | seconds per cell |" in text
    assert "| round-to-nearest | 70.00 (-21.00) |  | 1 |" in text
    assert "| + QAT | **90.00 (-1.00)** |  | 900 |" in text
    assert "| + BRECQ 3 steps + QAT |  | **85.00 (-6.00)** | 1200 |" in text
    assert "| QAT (integer export) |  |  | 78 (0.07×) |  |" in size_table(frame)  # the README's size block
    assert len(list((tmp_path / "report").glob("*.png"))) == 4


def test_a_grid_per_reader_is_a_cell_of_its_own_and_named_after_a_csv_round_trip(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", w_bits=4, a_bits=4, top1=80.0, shared_activations=True)
    fake_cell(sweep, "1", "2026-01-01T00:00:01", w_bits=4, a_bits=4, top1=81.0, shared_activations=False)
    fake_cell(sweep, "2", "2026-01-01T00:00:02", quant="torch_ptq", top1=82.0, shared_activations=None)
    frame = collect([sweep])
    assert len(frame) == 3  # not one duplicate of the other
    names = ["PyTorch · minmax", "ours · minmax", "ours · minmax · grid per reader"]
    assert sorted(variant(row) for _, row in frame.iterrows()) == names
    assert sorted(str(recipe(row)) for _, row in frame.iterrows()) == ["None", "None", "grid per reader"]
    frame.to_csv(tmp_path / "results.csv", index=False)  # read back: booleans beside a blank (NaN)
    assert sorted(variant(row) for _, row in read_results(tmp_path / "results.csv").iterrows()) == names


def test_a_full_range_weight_grid_is_a_cell_of_its_own_and_a_validation_table_appears(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", w_bits=2, a_bits=4, top1=60.0, val_top1=61.0, fp32_val_top1=88.0)
    fake_cell(sweep, "1", "2026-01-01T00:00:01", w_bits=2, a_bits=4, top1=62.0, weight_grid="full")
    frame = collect([sweep])
    assert sorted(variant(row) for _, row in frame.iterrows()) == [
        "ours · minmax · A4", "ours · minmax · A4 · full-range weights"
    ]  # fmt: skip
    text = results_markdown(frame, pd.DataFrame())
    assert "## Validation top-1 (%) and change vs FP32" in text and "| 61.00 (-27.00) |" in text
    fake_cell(sweep, "2", "2026-01-01T00:00:02", w_bits=2, a_bits=4, top1=65.0, recovery="BRECQ")
    fake_cell(sweep, "3", "2026-01-01T00:00:03", w_bits=2, a_bits=4, top1=66.0, recovery="BRECQ", weight_grid="full")
    table = recovery_table(collect([sweep]))
    assert "| round-to-nearest | 60.00 | 1 |" in table  # the narrow grid's cell, not the full one's (no FP32 cell)
    assert "| + full-range weights | 62.00 | 1 |" in table and "| + BRECQ | 65.00 | 1 |" in table
    assert "| + full-range weights + BRECQ | **66.00** | 1 |" in table


def test_a_recipe_with_a_wider_stem_and_classifier_is_a_recovery_row_of_its_own(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", w_bits=2, a_bits=4, top1=14.0)
    fake_cell(sweep, "1", "2026-01-01T00:00:01", w_bits=2, a_bits=4, top1=75.0, recovery="BRECQ")
    fake_cell(sweep, "2", "2026-01-01T00:00:02", w_bits=2, a_bits=4, top1=79.0, recovery="BRECQ", first_last_bits=8)
    fake_cell(sweep, "3", "2026-01-01T00:00:03", w_bits=2, a_bits=4, top1=20.0, first_last_bits=8)
    table = recovery_table(collect([sweep]))
    assert "| + BRECQ | 75.00 | 1 |" in table  # every layer at W2A4 keeps its row
    assert "| + first/last 8 bit + BRECQ | **79.00** | 1 |" in table and "| + first/last 8 bit | 20.00 | 1 |" in table
    assert [line.split(" |")[0] for line in table.splitlines()[2:]] == [
        "| round-to-nearest", "| + first/last 8 bit", "| + BRECQ", "| + first/last 8 bit + BRECQ"
    ]  # fmt: skip


def test_the_foreign_block_sets_another_models_cells_beside_ours_on_each_test_set(tmp_path: Path):
    """``--foreign``: the recipes run unchanged on another checkpoint, each model against its own FP32."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    models = ((ours, "w.pt", 89.0, 1.0, 92.0, 80.0), (theirs, "other/foreign.th", 81.0, 10.0, 91.0, 70.0))
    for root, checkpoint, fp32, drop, original_fp32, original in models:
        common = {"checkpoint": checkpoint, "fp32_top1": fp32, "w_bits": 4, "a_bits": 4, "observer": "mse"}
        fake_cell(root, "0", "2026-01-01T00:00:00", **common, top1=fp32 - drop, extra_test_top1=original,
                  extra_test_stderr=original / 64, extra_test_fp32_top1=original_fp32,
                  extra_test_label="original")  # fmt: skip
        fake_cell(root, "1", "2026-01-01T00:00:01", **common, top1=fp32 - 0.5, recovery="BRECQ")
    fake_cell(ours, "2", "2026-01-01T00:00:02", w_bits=8, a_bits=8, top1=88.9, fp32_top1=89.0)  # not run on theirs
    fake_cell(theirs, "2", "2026-01-01T00:00:02", w_bits=2, a_bits=4, observer="mse", top1=70.0, fp32_top1=81.0,
              checkpoint="other/foreign.th")  # not run on ours  # fmt: skip
    report([theirs], tmp_path / "theirs_report")
    page = tmp_path / "page.md"
    page.write_text("<!-- report:foreign -->\n<!-- /report:foreign -->\n")
    args = [str(ours), "--out", str(tmp_path / "report"), "--readme", str(page)]
    blocks = ["glance", "results", "sizes", "recovery", "mixed", "onnx", "spread"]
    (tmp_path / "rest.md").write_text("".join(f"<!-- report:{name} -->\n<!-- /report:{name} -->\n" for name in blocks))
    assert main([*args, str(tmp_path / "rest.md"), "--foreign", str(tmp_path / "theirs_report" / "results.csv")]) == 0
    lines = page.read_text().splitlines()[1:-1]
    assert lines[0] == "| model · test images | FP32 | W4A4 round-to-nearest | W4A4 BRECQ | W2A4 round-to-nearest |"
    assert lines[2:] == [
        "| `w.pt` · synthetic | 89.00 | 88.00 (-1.00) | 88.50 (-0.50) |  |",
        "| `w.pt` · original | 92.00 | 80.00 ± 1.25 (-12.00) |  |  |",
        "| `foreign.th` · synthetic | 81.00 | 71.00 (-10.00) | 80.50 (-0.50) | 70.00 (-11.00) |",
        "| `foreign.th` · original | 91.00 | 70.00 ± 1.09 (-21.00) |  |  |",
    ]


def test_cells_with_the_same_labels_but_other_settings_are_kept_apart(tmp_path: Path):
    sweep = tmp_path / "sweep"
    fake_cell(sweep, "0", "2026-01-01T00:00:00", top1=80.0, cell_key="a" * 64)
    fake_cell(sweep, "1", "2026-01-01T00:00:01", top1=70.0, cell_key="b" * 64)  # e.g. a 1-epoch wiring check
    fake_cell(sweep, "2", "2026-01-01T00:00:02", top1=81.0, cell_key="a" * 64)  # the same cell re-run
    assert sorted(collect([sweep])["top1"]) == [70.0, 81.0]


def test_exported_cells_get_an_onnx_runtime_row_and_the_newer_twin_is_shown(tmp_path: Path):
    sweep = tmp_path / "sweep"
    onnx = {
        "onnx_status": "ok", "onnx_top1": 89.9, "onnx_agreement": 99.5, "onnx_integer_kernels": 28, "onnx_opset": 13,
        "onnx_ms_batch1": 0.4, "onnx_fp32_ms_batch1": 0.5, "onnx_ms_batch256": 100.0, "onnx_fp32_ms_batch256": 130.0,
    }  # fmt: skip
    fake_cell(sweep, "0", "2026-01-01T00:00:00", top1=91.0, cell_key="a" * 64)  # the same cell, older, not exported
    fake_cell(sweep, "1", "2026-01-01T00:00:01", top1=90.0, cell_key="a" * 64, **onnx)
    fake_cell(sweep, "2", "2026-01-01T00:00:02", quant="torch_ptq", top1=89.0, cell_key="b" * 64,
              onnx_status="unsupported", onnx_reason="only our own models export")  # fmt: skip
    frame = collect([sweep])
    assert len(frame) == 2 and frame.loc[frame["quant"] == "custom_ptq", "onnx_status"].item() == "ok"
    table = onnx_table(frame)
    assert "| ours · minmax · W8 | W8A8 | 90.00 | 89.90 | 99.50 | 28 | 13 | 0.40 (0.50) | 100.00 (130.00) |" in table
    assert "- PyTorch · minmax · W8: **unsupported**: only our own models export" in table
    assert "## On ONNX Runtime" in results_markdown(frame, pd.DataFrame())
    assert onnx_table(collect([sweep / "0"])) == ""  # no exported cell, no table
    fake_cell(sweep, "3", "2026-01-01T00:00:03", top1=90.0, cell_key="a" * 64)  # re-run later, same model, no export
    assert "| ours · minmax · W8 | W8A8 | 90.00 | 89.90 |" in onnx_table(collect([sweep]))  # its ONNX fields kept
    fake_cell(sweep, "4", "2026-01-01T00:00:04", top1=90.5, cell_key="a" * 64)  # re-run later, other numbers
    assert "ours · minmax · W8" not in onnx_table(collect([sweep]))  # newer numbers win; their export is not shown


def test_the_demos_report_step_keeps_every_committed_cell(tmp_path: Path):
    """``make report`` merges the demo's sweeps into the committed results.csv: nothing committed is dropped."""
    # the narrow network's committed report: every kind of cell (grid, recovery, QAT, ONNX) of one checkpoint
    committed = pd.read_csv(Path(__file__).resolve().parent.parent / "multirun_reports/resnet20_narrow/results.csv")
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    committed.to_csv(report_dir / "results.csv", index=False)
    redone = committed[committed["quant"] == "custom_ptq"].iloc[0]
    sweep = tmp_path / "grid"
    keys = ("quant", "w_bits", "a_bits", "bits", "observer", "granularity", "fp32_top1", "cell_key", "checkpoint")

    def fields(row: pd.Series, names: tuple[str, ...]) -> dict:
        return {k: getattr(row[k], "item", lambda v=row[k]: v)() for k in names}  # numpy scalars as Python's

    fake_cell(sweep, "0", "2030-01-01T00:00:00", **fields(redone, keys), top1=12.5)
    exported = committed[committed["onnx_status"] == "ok"].iloc[0]  # re-run by the demo without export, same model
    fake_cell(sweep, "1", "2030-01-01T00:00:01", **fields(exported, (*keys, "top1")))
    assert main(["--from-csv", str(report_dir / "results.csv"), str(sweep), "--out", str(report_dir)]) == 0
    merged = pd.read_csv(report_dir / "results.csv")
    assert len(merged) == len(committed)
    assert (merged["onnx_status"] == "ok").sum() == (committed["onnx_status"] == "ok").sum()  # no ONNX row lost
    assert merged.loc[merged["cell_key"] == exported["cell_key"], "onnx_top1"].item() == exported["onnx_top1"]
    assert set(merged["cell_key"].dropna()) == set(committed["cell_key"].dropna())
    assert merged.loc[merged["cell_key"] == redone["cell_key"], "top1"].tolist() == [12.5]  # the demo's cell won
    assert (report_dir / "results.md").read_text().count("ONNX Runtime") >= 1


def test_the_baseline_block_sets_each_headline_cell_beside_the_other_checkpoints(tmp_path: Path):
    """``--baseline``: the older checkpoint's headline numbers beside these, each against its own FP32."""
    old, new = tmp_path / "old", tmp_path / "new"
    fp32 = {"quant": "none", "w_bits": 32, "a_bits": 32, "observer": "none"}
    fake_cell(old, "0", "2026-01-01T00:00:00", **fp32, top1=87.0, fp32_top1=87.0, checkpoint="old.pt")
    fake_cell(old, "1", "2026-01-01T00:00:01", w_bits=4, a_bits=4, top1=80.0, fp32_top1=87.0, checkpoint="old.pt")
    fake_cell(old, "2", "2026-01-01T00:00:02", w_bits=4, a_bits=4, top1=84.0, fp32_top1=87.0, checkpoint="old.pt",
              recovery="BRECQ 3 steps")  # fmt: skip
    fake_cell(old, "3", "2026-01-01T00:00:03", w_bits=2, a_bits=4, top1=60.0, fp32_top1=87.0, checkpoint="old.pt",
              recovery="BRECQ 3 steps")  # fmt: skip
    fake_cell(new, "0", "2026-01-01T00:00:04", **fp32, top1=90.0, fp32_top1=90.0)
    fake_cell(new, "1", "2026-01-01T00:00:05", w_bits=4, a_bits=4, top1=85.5, fp32_top1=90.0, observer="mse")
    fake_cell(new, "2", "2026-01-01T00:00:06", w_bits=4, a_bits=4, top1=85.0, fp32_top1=90.0)  # minmax: not the best
    report([old], tmp_path / "old_report")
    pages = tmp_path / "README.md"
    blocks = ["glance", "results", "sizes", "recovery", "mixed", "onnx", "spread", "baseline"]  # each needs a place
    pages.write_text("".join(f"<!-- report:{name} -->\n<!-- /report:{name} -->\n" for name in blocks))
    args = [str(new), "--out", str(tmp_path / "report"), "--readme", str(pages)]
    assert main([*args, "--baseline", str(tmp_path / "old_report" / "results.csv")]) == 0
    text = pages.read_text()
    assert "| FP32 | 87.00 | 90.00 |" in text
    assert "| W4A4, round-to-nearest | 80.00 (-7.00) · minmax | 85.50 (-4.50) · mse |" in text
    assert "| W4A4, best recovery recipe | 84.00 (-3.00) · minmax · BRECQ 3 steps |  |" in text  # not run on the new
    assert "| W2A4, best of our PTQ | 60.00 (-27.00) · minmax · BRECQ 3 steps |  |" in text
    assert "| W2A4, QAT |  |  |" in text


def test_other_calibration_draws_give_a_spread_and_a_wide_one_overrules_mcnemar(tmp_path: Path):
    sweep = tmp_path / "sweep"
    paired_sweep(sweep)  # ours W8 loses 6 images one way: a loss by McNemar alone
    common = {"test_images": 200, "extra_test_label": "original", "extra_test_stderr": 1.12, "extra_test_top1": 84.0}
    fake_cell(sweep, "3", "2026-01-01T00:00:03", top1=84.0, calib_seed=1, **common)
    fake_cell(sweep, "4", "2026-01-01T00:00:04", top1=90.0, calib_seed=2, **common)
    report([sweep], tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    # the draws' s.d. is 3.00, so a change of -3.00 is within 2 s.d.: within noise, whatever McNemar says
    assert "| ours, round-to-nearest · minmax | W8A8 | 87.00 | -3.00, within noise | 87.00 ± 3.00 (3) |" in text
    assert "| ours · minmax · W8 | W8A8 | 87.00 | 87.00 ± 3.00 | 3 | -3.00 |" in text  # the spread table
    assert "| ours · minmax | 84.00 ± 1.12 |" not in text  # the other draws are in no other table
    assert "| ours · minmax |  | 87.00 (-3.00) |  |  |" in text
