from pathlib import Path

import pandas as pd

from qexp.training.curves import epoch_metrics, main


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


def test_two_runs_share_one_figure_and_labels_must_match(tmp_path: Path, capsys):
    for run in ("a", "b"):
        folder = tmp_path / run / "csv" / "version_0"
        folder.mkdir(parents=True)
        rows = [{"epoch": e, "val/acc": 0.5, "val/ema_acc": 0.6, "train/loss": 1.0} for e in range(3)]
        pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main([*runs, "--label", "full width", "--label", "narrow", "--out", str(tmp_path / "out")]) == 0
    assert len(pd.read_csv(tmp_path / "out" / "metrics.csv")) == 3
    assert main([*runs, "--label", "only one", "--out", str(tmp_path / "out")]) == 2
    assert "1 --label values for 2 run directories" in capsys.readouterr().err
