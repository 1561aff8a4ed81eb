import json
from pathlib import Path

import pytest
from omegaconf import DictConfig
from torch import nn

from qexp.cells.evaluate import standard_error, unpack_correct
from qexp.cells.result import schema
from qexp.cells.weights import checkpoint_path, load_trained, save_weights
from qexp.data import CIFAR10DataModule, load_image_folder, normalize
from qexp.models import resnet20
from qexp.quant import quantize
from qexp.quantize import run
from tests.conftest import compose_config, recount_top1, run_module

FIELDS = {
    "quant", "bits", "w_bits", "a_bits", "observer", "granularity", "first_last_bits", "status", "reason",
    "top1", "fp32_top1", "size_bytes", "fp32_size_bytes", "calib_images", "seconds", "checkpoint", "data",
}  # fmt: skip


def rebuilt(cfg: DictConfig) -> tuple[nn.Module, nn.Module, CIFAR10DataModule]:
    """A cell's float model, its quantized model made here through the public API, and its data."""
    model, _, datamodule = load_trained(cfg, checkpoint_path(cfg.checkpoint))
    return model, quantize(model, cfg.quant, datamodule).model, datamodule


def test_design_card_sweep_runs_through_the_real_entry_point(tmp_path: Path, weights_file: Path):
    result = run_module(
        "qexp.quantize", "-m", "data=synthetic", f"checkpoint={weights_file}", "quant=custom_ptq,torch_ptq",
        "bits=2,8", "observer=minmax,percentile", f"hydra.sweep.dir={tmp_path}", f"cache_dir={tmp_path}/cache",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    cells = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/result.json"))]
    assert len(cells) == 8
    assert all(cell.keys() >= FIELDS for cell in cells)
    assert all(list(cell) == [name for name in schema() if name in cell] for cell in cells)  # the record's, in order
    status = {(c["quant"], c["bits"], c["observer"]): c["status"] for c in cells}
    assert status[("custom_ptq", 2, "minmax")] == status[("custom_ptq", 8, "percentile")] == "ok"
    assert status[("torch_ptq", 8, "minmax")] == "ok"
    assert status[("torch_ptq", 2, "minmax")] == status[("torch_ptq", 8, "percentile")] == "unsupported"
    assert {c["data"] for c in cells} == {"synthetic"}
    ok = [c for c in cells if c["status"] == "ok"]
    recount = compose_config("quantize", ["data=synthetic", f"checkpoint={weights_file}"], tmp_path / "recount")
    float_model, _, datamodule = load_trained(recount, weights_file)
    test = datamodule.splits["test"]
    fp32_top1 = recount_top1(float_model, test, datamodule.eval_batch_size)
    assert all(c["calib_images"] == 128 and c["test_images"] == len(test) and c["fp32_top1"] == fp32_top1 for c in ok)
    assert all(c["size_bytes"] < c["fp32_size_bytes"] for c in ok)
    assert all(0 < c["payload_bytes"] < c["size_bytes"] for c in ok)  # the numbers alone, without the format
    for cell in ok:  # per-image correctness agrees with the top-1 it was measured with
        assert 100 * unpack_correct(cell["test_correct"], cell["test_images"]).mean() == pytest.approx(cell["top1"])


def test_fp32_row_and_w4a8(compose_in, weights_file: Path):
    none = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "quant=none"]))
    assert none["status"] == "ok" and none["top1"] == none["fp32_top1"] and none["w_bits"] == 32
    w4a8 = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "bits=4", "quant.a_bits=8"]))
    assert (w4a8["w_bits"], w4a8["a_bits"], w4a8["status"]) == (4, 8, "ok")
    assert w4a8["fp32_top1"] == none["fp32_top1"]


def test_calibration_never_touches_the_test_split(compose_in, weights_file: Path, monkeypatch):
    from qexp import data

    seen = []
    original = data.CIFAR10DataModule.calibration_split

    def spy(self):
        split = original(self)
        seen.append((split, self.splits["test"]))
        return split

    monkeypatch.setattr(data.CIFAR10DataModule, "calibration_split", spy)
    result = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "bits=8"]))
    assert result["status"] == "ok" and seen
    calibration, test = seen[0]
    test_images = {bytes(image.numpy()) for image in test.images}
    assert not any(bytes(image.numpy()) in test_images for image in calibration.images)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["quant.w_bits=1"], "quant.w_bits=1 is not supported"),
        (["checkpoint=/nonexistent/weights.pt"], "does not exist"),
        (["data.calib_size=0"], "data.calib_size=0"),
        (["quant.weight_grid=wide"], "quant.weight_grid='wide' is not known; expected one of ('narrow', 'full')"),
    ],
)
def test_bad_input_fails_the_cell_with_its_reason(compose_in, weights_file: Path, overrides, message):
    overrides = ["data=synthetic", f"checkpoint={weights_file}", *overrides]
    result = run(compose_in("quantize", overrides))
    assert result["status"] == "failed" and message in result["reason"]


def test_corrupt_and_foreign_checkpoints_are_rejected(compose_in, tmp_path: Path):
    import torch

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"arch": "resnet56", "state_dict": {}}, foreign)
    for path, message in ((corrupt, "could not be read"), (foreign, "holds arch 'resnet56'")):
        result = run(compose_in("quantize", ["data=synthetic", f"checkpoint={path}"]))
        assert result["status"] == "failed" and message in result["reason"]


def test_a_foreign_state_dict_is_fed_with_its_own_normalisation_and_validated_as_its_side_file_says(
    compose_in, tmp_path: Path
):
    """A public ResNet20 (``module.`` keys, ``linear``, ImageNet normalisation) is scored as it was trained."""
    import torch

    from qexp.cells.evaluate import classify
    from qexp.data import IMAGENET_NORMALIZATION
    from tests.test_fold import randomise_batchnorm
    from tests.test_weights import foreign_file

    torch.manual_seed(0)
    model = randomise_batchnorm(resnet20()).eval()
    path = foreign_file(tmp_path, model)
    overrides = ["data=synthetic", f"checkpoint={path}", "quant=none"]
    refused = run(compose_in("quantize", overrides))  # it trained on every training image: nothing to validate on
    assert refused["status"] == "failed" and "trained with data.val_size=0 held out" in refused["reason"]
    result = run(compose_in("quantize", [*overrides, "data.val_size=0"]))
    data = CIFAR10DataModule(source="synthetic", val_size=0, calib_size=128, synthetic_sizes=(512, 256))
    data.setup()
    test = data.splits["test"]
    expected = classify(model, test, lambda x: normalize(x, IMAGENET_NORMALIZATION), 128)
    assert result["status"] == "ok" and result["fp32_top1"] == expected.top1
    assert result["test_correct"] == expected.correct()
    # Calibration, evaluation and QAT all read the data module's batches: they are ImageNet-standardised.
    _, _, loaded = load_trained(compose_in("quantize", [*overrides, "data.val_size=0"]), path)
    (first, *_) = loaded.calibration_batches(torch.device("cpu"))
    images = loaded.calibration_split().images[: len(first)]
    torch.testing.assert_close(first, normalize(images, IMAGENET_NORMALIZATION), rtol=0, atol=0)
    assert (first - normalize(images)).abs().max() > 0.1


def test_a_cell_keeps_its_quantized_model_and_the_kept_model_scores_what_the_cell_reported(
    compose_in, weights_file: Path
):
    from qexp.cells.result import QUANTIZED_MODEL
    from qexp.report.anatomy import load_cell_model

    cfg = compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "bits=4", "quant.a_bits=8"])
    result = run(cfg)
    assert (Path(cfg.output_dir) / QUANTIZED_MODEL).is_file()
    model, _, data = load_trained(cfg, weights_file)
    kept = load_cell_model(model, Path(cfg.output_dir), result)
    assert recount_top1(kept, data.splits["test"], data.eval_batch_size) == result["top1"]


def test_single_run_with_bad_bits_exits_non_zero_without_traceback(tmp_path: Path, weights_file: Path):
    result = run_module(
        "qexp.quantize", "data=synthetic", f"checkpoint={weights_file}", "bits=20", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 2
    assert "error: quant.w_bits=20 is not supported; expected an integer from 2 to 16." in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_recovery_options_run_through_the_entry_point_and_name_the_cell(compose_in, weights_file: Path):
    overrides = [
        "data=synthetic", f"checkpoint={weights_file}", "bits=4", "quant.equalize=true", "quant.bias_correction=true",
        "quant.reconstruct=block", "quant.reconstruction.steps=3",
    ]  # fmt: skip
    result = run(compose_in("quantize", overrides))
    assert result["status"] == "ok", result["reason"]
    assert result["recovery"] == "CLE + BRECQ+LSQ+QDrop 3 steps, 0.125 held out + bias corr."
    bad = run(compose_in("quantize", [*overrides[:3], "quant.reconstruct=network"]))
    assert bad["status"] == "failed" and "quant.reconstruct='network'" in bad["reason"]


def test_an_internal_error_keeps_its_type_in_the_reason_and_its_traceback_in_the_log(
    compose_in, weights_file: Path, monkeypatch, caplog
):
    from qexp import quantize

    def broken(*args, **kwargs):
        raise ValueError("a shape went wrong inside qexp")  # a plain ValueError is not the user's input

    monkeypatch.setattr(quantize, "quantize", broken)
    with caplog.at_level("ERROR", logger="qexp.quantize"):
        result = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "bits=8"]))
    assert result["status"] == "failed"
    assert result["reason"] == "ValueError: a shape went wrong inside qexp"
    assert "Traceback" in caplog.text and "in broken" in caplog.text


def test_a_user_error_is_its_message_alone(compose_in, weights_file: Path, caplog):
    with caplog.at_level("ERROR", logger="qexp.quantize"):
        result = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "quant.method=gptq"]))
    assert result["status"] == "failed"
    assert result["reason"] == (
        "quant.method='gptq' is not known; expected one of ('none', 'custom_ptq', 'torch_ptq', 'qat')."
    )
    assert "Traceback" not in caplog.text


def test_a_finished_cell_is_skipped_and_a_stale_failed_or_forced_one_runs(compose_in, weights_file: Path, monkeypatch):
    from qexp import quantize as entry

    overrides = ["data=synthetic", f"checkpoint={weights_file}", "bits=8"]
    first = run(compose_in("quantize", overrides))
    assert first["status"] == "ok" and len(first["cell_key"]) == 64

    def broken(*args, **kwargs):
        raise RuntimeError("quantize must not run for a finished cell")

    monkeypatch.setattr(entry, "quantize", broken)
    again = run(compose_in("quantize", overrides))
    assert again == first  # read back, not recomputed
    stale = run(compose_in("quantize", [*overrides, "observer=mse"]))  # another config in the same directory
    assert stale["status"] == "failed" and "RuntimeError" in stale["reason"]
    forced = run(compose_in("quantize", [*overrides, "redo=true"]))
    assert forced["status"] == "failed"  # redo ran it (and met the broken quantize)
    monkeypatch.undo()
    redone = run(compose_in("quantize", overrides))  # the failed result.json is not a finished cell
    assert redone["status"] == "ok" and redone["top1"] == first["top1"]


def test_fp32_reference_is_measured_once_per_checkpoint_and_test_split(compose_in, weights_file: Path, tmp_path: Path):
    first = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "quant=none"]))
    caches = list((tmp_path / "cache").glob("fp32-*.json"))  # one per split: test and validation
    (cache,) = [path for path in caches if "fp32_top1" in json.loads(path.read_text())]
    assert json.loads(cache.read_text())["fp32_top1"] == first["fp32_top1"] and len(caches) == 2
    cache.write_text(json.dumps({"fp32_top1": 42.0, "fp32_size_bytes": 7}))  # a planted value proves the read
    second = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "bits=8"]))
    assert (second["fp32_top1"], second["fp32_size_bytes"]) == (42.0, 7)
    other_test = run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}", "data.seed=3", "bits=8"]))
    assert other_test["fp32_top1"] != 42.0 and len(list((tmp_path / "cache").glob("fp32-*.json"))) == 4


def test_results_hold_no_absolute_path_of_the_checkout(compose_in):
    result = run(compose_in("quantize", ["data=synthetic", "quant=none"]))
    assert result["checkpoint"] == "qexp/assets/resnet20_cifar10_jpeg.pt"
    assert str(Path.cwd()) not in json.dumps(result["config"])


def test_a_second_test_set_is_measured_beside_the_test_split(compose_in, weights_file: Path, image_folder: Path):
    extra = [f"data.extra_test_root={image_folder}", "data.extra_test_label=folder"]
    base = ["data=synthetic", f"checkpoint={weights_file}", *extra]
    fp32 = run(compose_in("quantize", [*base, "quant=none"]))
    w8 = run(compose_in("quantize", [*base, "bits=8"]))
    assert fp32["status"] == w8["status"] == "ok"
    assert fp32["extra_test_top1"] == fp32["extra_test_fp32_top1"] == w8["extra_test_fp32_top1"]
    float_model, w8_model, datamodule = rebuilt(compose_in("quantize", [*base, "bits=8"]))
    extra_test = load_image_folder(image_folder, splits=("test",))["test"]  # read here, not through the data module
    batch = datamodule.eval_batch_size
    assert fp32["extra_test_top1"] == recount_top1(float_model, extra_test, batch)
    assert w8["extra_test_top1"] == recount_top1(w8_model, extra_test, batch)
    for cell in (fp32, w8):
        assert cell["extra_test_label"] == "folder"
        assert cell["extra_test_stderr"] == pytest.approx(standard_error(cell["extra_test_top1"], 60))
    assert "extra_test_top1" not in run(compose_in("quantize", ["data=synthetic", f"checkpoint={weights_file}"]))


def test_every_cell_scores_the_validation_split_the_checkpoint_never_saw(compose_in, weights_file: Path):
    base = ["data=synthetic", f"checkpoint={weights_file}"]
    fp32 = run(compose_in("quantize", [*base, "quant=none"]))
    w2 = run(compose_in("quantize", [*base, "bits=2"]))
    assert fp32["val_top1"] == fp32["fp32_val_top1"] == w2["fp32_val_top1"] and fp32["val_images"] == 64
    float_model, w2_model, datamodule = rebuilt(compose_in("quantize", [*base, "bits=2"]))
    val, batch = datamodule.splits["val"], datamodule.eval_batch_size
    assert fp32["val_top1"] == recount_top1(float_model, val, batch) and w2["val_images"] == len(val) == 64
    assert w2["val_top1"] == recount_top1(w2_model, val, batch)
    assert "val_top1" not in run(compose_in("quantize", [*base, "data.val_size=0"]))


def test_a_validation_split_other_than_the_checkpoints_is_refused(compose_in, tmp_path: Path):
    path = tmp_path / "held-out.pt"
    save_weights(path, resnet20(), arch="resnet20", meta={"val_size": 64, "split_seed": 0})
    result = run(compose_in("quantize", ["data=synthetic", f"checkpoint={path}", "data.seed=1"]))
    assert result["status"] == "failed" and result["user_error"]
    assert "Run with data.val_size=64 data.seed=0" in result["reason"]


def test_a_full_range_weight_grid_is_a_cell_of_its_own(compose_in, weights_file: Path):
    base = ["data=synthetic", f"checkpoint={weights_file}", "bits=2", "quant.a_bits=8"]
    narrow = run(compose_in("quantize", base))
    full = run(compose_in("quantize", [*base, "quant.weight_grid=full"]))
    assert narrow["weight_grid"] is None and full["weight_grid"] == "full"  # None: the grid every older cell used
    assert narrow["cell_key"] != full["cell_key"] and narrow["size_bytes"] == full["size_bytes"]  # same two bits
    assert {tuple(bits) for bits in full["layer_bits"].values()} == {(2, 8)}
