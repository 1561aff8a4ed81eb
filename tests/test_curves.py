from pathlib import Path

import pandas as pd

from qexp.curves import epoch_metrics, main


def test_versions_of_a_resumed_run_are_joined_one_row_per_epoch(tmp_path: Path):
    for version, epochs in ((0, [0, 1]), (1, [1, 2])):  # epoch 1 logged again after a resume
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        rows = []
        for epoch in epochs:
            rows.append({"epoch": epoch, "step": 10 * epoch, "val/acc": 0.5 + 0.1 * epoch + 0.01 * version})
            rows.append({"epoch": epoch, "step": 10 * epoch, "train/loss": 2.0 - epoch})
        pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    metrics = epoch_metrics(tmp_path)
    assert metrics["epoch"].tolist() == [0, 1, 2]
    assert metrics["val/acc"].round(2).tolist() == [0.5, 0.61, 0.71]
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 10_000


def test_missing_logs_are_a_clear_error(tmp_path: Path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no csv/version_*/metrics.csv" in capsys.readouterr().err
