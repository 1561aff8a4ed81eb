import itertools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from qexp.cells.weights import load_weights
from qexp.models import resnet20
from qexp.train import choose_weights, train
from qexp.training.module import warmup_cosine
from tests.conftest import recount_top1, run_module


def test_train_entry_trains_resumes_and_exports(compose_in, tmp_path: Path, image_folder: Path):
    extra = ["data.extra_test_root=" + str(image_folder), "data.extra_test_label=folder"]
    cfg = compose_in("train", ["data=synthetic", "trainer=smoke", "optim.ema_decay=0.9", *extra])
    meta = train(cfg)
    assert meta["extra_test"]["label"] == "folder" and meta["extra_test"]["images"] == 60
    p = meta["extra_test"]["top1"] / 100
    assert meta["extra_test"]["stderr"] == pytest.approx(100 * (p * (1 - p) / 60) ** 0.5)
    export = Path(cfg.export_path)
    assert export.is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "checkpoints").glob("epoch=0-*.ckpt"))  # saved every epoch, not only at the end
    model = resnet20()
    loaded = load_weights(export, model, "resnet20")
    # The exported weights are the ones that validated better (EMA on a tie), and they score what the file says.
    val = loaded["val_top1"]
    assert loaded["weights"] == ("ema" if val["val/ema_acc"] >= val["val/acc"] else "raw")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    test, batch = datamodule.splits["test"], datamodule.eval_batch_size
    assert loaded["test_top1_fp32"] == recount_top1(model, test, batch)
    assert loaded["test_top1_flip_averaged"] == recount_top1(model, test, batch, flip=True)
    assert loaded["extra_test"]["top1"] == recount_top1(model, datamodule.splits["extra_test"], batch)
    # Lightning's test loop, in fp32 on trainer=smoke's one test batch (limit_test_batches=1).
    assert cfg.trainer.limit_test_batches == 1 and cfg.trainer.precision == "32-true"
    assert loaded["test_top1"] == pytest.approx(recount_top1(model, test.subset(torch.arange(batch)), batch))
    assert loaded["data"] == "synthetic" and loaded["epochs"] == 1 == meta["epochs"]
    payload = torch.load(export, weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in payload["state_dict"])
    # the same command again resumes from last.ckpt and trains one more epoch
    cfg.trainer.max_epochs = 2
    second = train(cfg)
    assert second["epochs"] == 2
    # a finished run re-run trains nothing, but still validates: the export is chosen on validation
    again = train(cfg)
    assert again["epochs"] == 2 and again["val_top1"] == pytest.approx(second["val_top1"], abs=2.0)
    assert set(again["val_top1"]) == {"val/acc", "val/ema_acc"} and again["weights"] == second["weights"]


def test_schedule_warms_up_then_decays_to_zero():
    factors = [warmup_cosine(step, total_steps=100, warmup_steps=10) for step in range(101)]
    assert factors[0] == 0.1 and factors[9] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[100] == 0.0


def test_export_prefers_ema_only_when_it_validates_better():
    assert choose_weights({"val/acc": 0.9, "val/ema_acc": 0.91}) == "ema"
    assert choose_weights({"val/acc": 0.92, "val/ema_acc": 0.91}) == "raw"
    assert choose_weights({"test/acc": 0.9}) == "raw"


def test_bad_data_root_is_one_clear_error_without_traceback(tmp_path: Path):
    result = run_module(
        "qexp.train", "data=cifar10_folder", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path}/run"
    )
    assert result.returncode == 2
    assert "error: data.root=" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_config_group_option_names_the_choices(tmp_path: Path):
    result = run_module("qexp.train", "data=imagenet", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0
    assert "Could not find 'data/imagenet'" in result.stderr and "cifar10_folder" in result.stderr
    assert "Traceback" not in result.stderr
