from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from qexp.cells.weights import save_weights
from qexp.models import resnet20
from qexp.report.recipes import main, recipe_row, recipes_markdown
from tests.conftest import compose_config


def write_run(folder: Path, overrides: list[str], val: dict[str, float], teacher: dict | None = None) -> Path:
    cfg = compose_config("train", overrides, folder)
    path = folder / "weights.pt"
    folder.mkdir(parents=True)
    meta = {
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "val_top1": val,
        "test_top1": 99.0,
        "epochs": 15,
        "train_seconds": 600.0,
        "train_images": 45000,
        "teacher": teacher,
        "command": "python -m qexp.train " + " ".join(overrides),
    }
    save_weights(path, resnet20(), arch="resnet20", meta=meta)
    return path


def test_rows_carry_the_recipe_and_validation_but_never_test(tmp_path: Path):
    plain = write_run(tmp_path / "plain", ["optim.weight_decay=1e-4", "data.cutout_size=8"], {"val/acc": 80.0})
    teacher = {"arch": "widenet", "val_top1": 88.5, "alpha": 0.9, "temperature": 4.0}
    distilled = write_run(
        tmp_path / "distilled",
        ["experiment=distill", "teacher.checkpoint=t.pt"],
        {"val/acc": 81.0, "val/ema_acc": 82.5},
        teacher,
    )
    row = recipe_row(plain)
    assert row["run"] == "plain" and row["weight_decay"] == 1e-4 and row["cutout"] == 8 and row["minutes"] == 10.0
    assert row["teacher"] is None and "test_top1" not in row
    table_text = recipes_markdown(pd.DataFrame([row, recipe_row(distilled)]))
    lines = table_text.splitlines()
    assert lines[2].startswith("| distilled | resnet20 | 45000 | 15 | 0 | 0 | 0.0005 | 0.999 | widenet |")  # best first
    assert "88.50" in lines[2] and "82.50" in lines[2] and "99.0" not in table_text  # the test top-1 is not shown
    assert "`python -m qexp.train experiment=distill teacher.checkpoint=t.pt`" in table_text


def test_entry_point_writes_both_files_and_rejects_a_bad_file(tmp_path: Path, capsys):
    run = write_run(tmp_path / "a", [], {"val/acc": 70.0})
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "recipes.csv").is_file() and "| a |" in (tmp_path / "out" / "recipes.md").read_text()
    (tmp_path / "bad.pt").write_text("not a weight file")
    assert main([str(tmp_path / "bad.pt"), "--out", str(tmp_path / "out2")]) == 2
    assert "could not be read as a qexp weight file" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
    (tmp_path / "README.md").write_text("no block here\n")
    assert main([str(run), "--out", str(tmp_path / "out3"), "--readme", str(tmp_path / "README.md")]) == 2
    assert "has no block for ['recipes']" in capsys.readouterr().err and not (tmp_path / "out3").exists()


def test_the_readme_recipe_table_is_the_committed_one():
    from qexp.report.readme import stale_blocks
    from tests.conftest import ROOT

    table = pd.read_csv(ROOT / "reports" / "recipes" / "recipes.csv")
    block = {"recipes": recipes_markdown(table).rstrip("\n")}
    assert stale_blocks((ROOT / "docs" / "training.md").read_text(), block) == [], (
        "docs/training.md's recipe table disagrees with reports/recipes/recipes.csv; regenerate it with "
        "python -m qexp.report.recipes outputs/teacher/weights.pt outputs/proxies/*/weights.pt --out reports/recipes "
        "--readme docs/training.md"
    )
