"""QAT (quant=qat): learned step sizes in a model, a training step, the entry point, the report, bad input."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from qexp.cells.evaluate import top1, unpack_correct
from qexp.cells.weights import save_weights
from qexp.data import CIFAR10DataModule
from qexp.errors import QexpError
from qexp.quant import api
from qexp.quant.core.lsq import LearnedStepQuantizer, freeze_step_sizes, learn_step_sizes
from qexp.quant.core.modules import Mode, QuantLayer, quantizers
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.qat import finetune
from qexp.quant.qat.finetune import QATConfig, ValidationHistory, fine_tune, still_rising
from qexp.quantize import run
from qexp.report import report
from qexp.training.module import Classifier
from tests.conftest import compose_config, recount_top1
from tests.test_ptq import batches, tiny_resnet

# A QAT cell small enough for a test: 3 steps of 64 synthetic images per epoch.
SHORT = ["data=synthetic", "quant=qat", "quant.batch_size=64", "quant.trainer.limit_train_batches=3"]


def test_gradients_reach_every_weight_and_step_size_and_scales_are_written_back():
    model = tiny_resnet()
    student, _ = quantize_model(model, PTQConfig(w_bits=2, a_bits=4), batches(1))
    before = {name: q.scale.clone() for name, q in quantizers(student).items()}
    learn_step_sizes(student)
    stand_ins = {name: m for name, m in student.named_modules() if isinstance(m, LearnedStepQuantizer)}
    assert stand_ins.keys() == before.keys() and not quantizers(student)
    student(batches(2)[0]).logsumexp(1).sum().backward()
    layers = [m for m in student.modules() if isinstance(m, QuantLayer)]
    assert all(layer.layer.weight.grad.abs().sum() > 0 for layer in layers)
    assert all(stand_in.scale.grad.abs().sum() > 0 for stand_in in stand_ins.values())
    with torch.no_grad():
        for stand_in in stand_ins.values():
            stand_in.scale.mul_(1.5)
    freeze_step_sizes(student)
    after = quantizers(student)
    assert after.keys() == before.keys() and all(q.mode is Mode.QUANTIZE for q in after.values())
    assert all(torch.allclose(after[name].scale, 1.5 * before[name]) for name in before)


def test_qat_learns_one_step_size_per_shared_tensor_and_every_reader_uses_it():
    student, _ = quantize_model(tiny_resnet(), PTQConfig(w_bits=2, a_bits=4, shared_activations=True), batches(1))
    producer = student.layer1[0].relu2.output_quantizer
    before = producer.scale.clone()
    learn_step_sizes(student)
    stand_ins = [m for m in student.modules() if isinstance(m, LearnedStepQuantizer)]
    assert len(stand_ins) == 8 + 11  # 8 weights; 14 activation quantizers less one per shared tensor (3)
    student(batches(2)[0]).logsumexp(1).sum().backward()
    shared = student.layer1[0].relu2.output_quantizer
    assert shared.scale.grad.abs() > 0  # from the conv1 and the shortcut of layer2.0 together
    with torch.no_grad():
        shared.scale.mul_(1.5)
    freeze_step_sizes(student)
    assert student.layer2[0].conv1.input_quantizer.quantizer is student.layer2[0].add.quantizer_b.quantizer is producer
    assert student.layer1[0].relu2.output_quantizer is producer and torch.allclose(producer.scale, 1.5 * before)


def test_one_qat_step_lowers_the_distillation_loss_on_a_tiny_model():
    teacher = tiny_resnet()
    student, _ = quantize_model(teacher, PTQConfig(w_bits=2, a_bits=4, observer="mse"), batches(1))
    module = Classifier(learn_step_sizes(student.requires_grad_(True).train()), optimizer=torch.optim.SGD,
                        teacher=teacher, label_smoothing=0.0)  # fmt: skip
    module.log = lambda *args, **kwargs: None  # no trainer attached
    images = batches(2)[0]
    labels = teacher(images).argmax(1)
    optimizer = torch.optim.SGD(module.model.parameters(), lr=1e-2)
    loss = module.training_step((images, labels), 0)
    loss.backward()
    optimizer.step()
    assert module.training_step((images, labels), 0).detach() < 0.97 * loss.detach()  # 0.333 -> 0.314


def test_fp32_validation_computes_the_fp32_logits_inside_a_bf16_autocast():
    images = batches(2)[0]
    labels = torch.zeros(len(images), dtype=torch.long)
    for fp32, exact in ((True, True), (False, False)):  # off (the default): the bf16 logits, as training validated
        module = Classifier(tiny_resnet(), optimizer=torch.optim.SGD, fp32_validation=fp32).eval()
        seen = []
        module._evaluate = lambda batch, stage, module=module, seen=seen: seen.append(module.model(batch[0]))
        with torch.no_grad():
            expected = module.model(images)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # as Lightning runs the step under bf16-mixed
                module.validation_step((images, labels), 0)
        assert torch.equal(seen[0], expected) is exact


def tiny_qat_data(val_size: int = 64) -> CIFAR10DataModule:
    """Synthetic 32x32 images: 192 to train on (64 of them calibrate), ``val_size`` to validate, 64 to test."""
    data = CIFAR10DataModule(source="synthetic", synthetic_sizes=(192 + val_size, 64), val_size=val_size,
                             calib_size=64, batch_size=32, eval_batch_size=32)  # fmt: skip
    data.setup()
    return data


def test_under_bf16_mixed_every_epochs_validation_is_an_fp32_count_of_that_epochs_model(tmp_path: Path, monkeypatch):
    # 512 images: with fp32_validation off, bf16 validation counted 5 of them otherwise (on an AVX512-BF16 CPU)
    teacher, data = tiny_resnet(), tiny_qat_data(val_size=512)
    student, _ = quantize_model(teacher, PTQConfig(w_bits=2, a_bits=4), data.calibration_batches(torch.device("cpu")))
    start = top1(student, data.splits["val"], data.normalize, data.eval_batch_size)
    original, recounted = ValidationHistory.on_validation_epoch_end, []

    def recount(self, trainer, pl_module):
        original(self, trainer, pl_module)
        assert trainer.precision == "bf16-mixed"
        with torch.autocast("cpu", enabled=False):  # the model as the epoch left it, counted in a plain fp32 loop
            recounted.append(recount_top1(pl_module.model, data.splits["val"], data.eval_batch_size))

    monkeypatch.setattr(ValidationHistory, "on_validation_epoch_end", recount)
    trainer_cfg = OmegaConf.create(
        {"_target_": "lightning.Trainer", "accelerator": "cpu", "precision": "bf16-mixed", "limit_train_batches": 2,
         "num_sanity_val_steps": 0, "log_every_n_steps": 1}
    )  # fmt: skip
    qat = fine_tune(student, teacher, data, QATConfig(epochs=2, batch_size=32, lr=0.05), trainer_cfg, tmp_path)
    assert qat.val_top1 == pytest.approx(recounted, abs=1e-4)  # to the image: one is 100 / 512 points
    assert qat.chosen_val_top1 == pytest.approx(max(recounted), abs=1e-4)
    assert qat.start_val_top1 == start  # epoch 0, the PTQ model, counted before anything trained
    assert qat.still_rising is still_rising(start, qat.val_top1)


@pytest.mark.parametrize(
    ("history", "rising"),
    [([], False), ([12.0], True), ([10.0], False), ([9.0], False), ([11.0, 12.0], True), ([12.0, 12.0], False),
     ([12.0, 11.0], False), ([9.0, 9.5], True)],
)  # fmt: skip
def test_a_curve_is_still_rising_when_its_last_epoch_is_its_best(history, rising):
    assert still_rising(10.0, history) is rising  # the start at 10 %; equals: the first is kept, so not rising


def tiny_qat_cell(tmp_path: Path, *overrides: str) -> tuple[torch.nn.Module, DictConfig, CIFAR10DataModule]:
    """A teacher, the composed ``quant`` of a one-step QAT cell with these overrides, and its synthetic data."""
    cfg = compose_config("quantize", ["data=synthetic", "quant=qat", "bits=2", "quant.a_bits=4", "quant.epochs=1",
                                      "quant.batch_size=32", "quant.trainer.limit_train_batches=1",
                                      "quant.trainer.precision=32-true", *overrides], tmp_path)  # fmt: skip
    return tiny_resnet(), cfg.quant, tiny_qat_data()


def test_qat_with_block_reconstruction_starts_from_the_model_quantize_model_reconstructs(tmp_path: Path, monkeypatch):
    teacher, quant, data = tiny_qat_cell(tmp_path, "quant.reconstruct=block", "quant.reconstruction.steps=5")
    images = data.normalize(data.splits["val"].images[:32])
    started = []

    def fine_tune_recording_its_start(student, *args, **kwargs):
        with torch.no_grad():
            started.append(student.eval()(images))
        return fine_tune(student, *args, **kwargs)

    monkeypatch.setattr(api, "fine_tune", fine_tune_recording_its_start)
    calibration = list(data.calibration_batches(torch.device("cpu")))
    reconstructed, _ = quantize_model(teacher, api.ptq_config(quant), calibration)
    rounded, _ = quantize_model(teacher, replace(api.ptq_config(quant), reconstruction=None), calibration)
    qat = api.quantize_with_qat(teacher, quant, data, tmp_path / "qat", False)
    with torch.no_grad():
        assert torch.equal(started[0], reconstructed(images))
        assert not torch.allclose(started[0], rounded(images))  # the option did something: not round to nearest
    val = data.splits["val"]
    assert qat.method_fields.qat_start_val_top1 == top1(reconstructed, val, data.normalize, data.eval_batch_size)


def test_a_curve_still_rising_at_its_last_epoch_is_said_and_recorded(tmp_path: Path, monkeypatch, caplog):
    teacher, quant, data = tiny_qat_cell(tmp_path)
    monkeypatch.setattr(finetune, "top1", lambda *args: -1.0)  # a start every epoch beats
    with caplog.at_level("WARNING", logger="qexp.quant.qat.finetune"):
        qat = api.quantize_with_qat(teacher, quant, data, tmp_path / "qat", False)
    fields = qat.method_fields
    assert (fields.qat_start_val_top1, fields.qat_still_rising, fields.qat_chosen_epoch) == (-1.0, True, 1)
    assert "the best validation epoch is the last one, epoch 1" in caplog.text
    assert "still rising, and more epochs (quant.epochs above 1) may help" in caplog.text
    assert qat.note.endswith("epoch 1 (best on validation in fp32), still rising: more epochs may help")


def test_bad_training_settings_are_refused():
    with pytest.raises(QexpError, match=r"quant.epochs=0 is out of range"):
        QATConfig(epochs=0)
    with pytest.raises(QexpError, match=r"quant.alpha=1.5 is out of range"):
        QATConfig(alpha=1.5)


def test_a_short_qat_cell_runs_through_the_entry_point_and_lands_in_the_report(tmp_path: Path, weights_file: Path):
    # Validation in fp32, as the chosen epoch is scored again afterwards: the two must agree.
    overrides = [*SHORT, f"checkpoint={weights_file}", "bits=4", "quant.epochs=2", "quant.trainer.precision=32-true"]
    cfg = compose_config("quantize", overrides, tmp_path / "sweep" / "0")
    cell = run(cfg)
    assert cell["status"] == "ok", cell["reason"]
    assert (cell["quant"], cell["w_bits"], cell["a_bits"], cell["qat_epochs"]) == ("qat", 4, 4, 2)
    history = cell["qat_val_history"]
    assert len(history) == 2 and cell["qat_seconds"] > 0
    assert cell["qat_chosen_epoch"] == 1 + history.index(max(history))  # the first best epoch, counted from 1
    assert cell["qat_val_top1"] == pytest.approx(max(history))
    # The chosen epoch's model scored again after training, quantizers frozen: what validation measured, to an
    # image (validation batches images as the evaluation does, but the learned step size passes through LSQ's
    # gradient scaling, which can move it by an ulp).
    assert cell["val_images"] == cfg.data.val_size
    assert cell["val_top1"] == pytest.approx(cell["qat_val_top1"], abs=100 / cfg.data.val_size)
    assert f"from FP32, epoch {cell['qat_chosen_epoch']} (best on validation in fp32)" in cell["reason"]
    assert isinstance(cell["qat_start_val_top1"], float) and isinstance(cell["qat_still_rising"], bool)
    _, test_images = cfg.data.synthetic_sizes
    assert cell["calib_images"] == cfg.data.calib_size and cell["test_images"] == test_images
    assert 100 * unpack_correct(cell["test_correct"], test_images).mean() == pytest.approx(cell["top1"])
    checkpoints = next((tmp_path / "sweep" / "0" / "qat").iterdir()) / "checkpoints"
    assert {"last.ckpt", "best.ckpt"} <= {p.name for p in checkpoints.iterdir()}
    ptq = run(compose_config("quantize", ["data=synthetic", f"checkpoint={weights_file}", "bits=4"],
                             tmp_path / "sweep" / "1"))  # fmt: skip
    # The same integer export: the fine-tuned model stores what the PTQ model stores.
    assert (cell["size_bytes"], cell["payload_bytes"]) == (ptq["size_bytes"], ptq["payload_bytes"])
    assert cell["layer_bits"] == ptq["layer_bits"]
    run(compose_config("quantize", ["data=synthetic", f"checkpoint={weights_file}", "quant=none"],
                       tmp_path / "sweep" / "2"))  # fmt: skip
    frame = report([tmp_path / "sweep"], tmp_path / "report")
    assert sorted(frame["quant"]) == ["custom_ptq", "none", "qat"]
    text = (tmp_path / "report" / "results.md").read_text()
    assert f"| QAT · minmax |  |  | {cell['top1']:.2f} ({cell['top1'] - cell['fp32_top1']:+.2f}) |  |" in text
    assert f"| QAT · minmax | W4A4 | {cell['top1']:.2f} |" in text  # at a glance
    assert "| + QAT |" in text  # a row of the recovery table, beside round-to-nearest


def test_a_killed_qat_cell_resumes_from_its_last_epoch(tmp_path: Path, weights_file: Path, monkeypatch, caplog):
    overrides = [*SHORT, f"checkpoint={weights_file}", "bits=4", "quant.epochs=2"]
    original = ValidationHistory.on_validation_epoch_end

    def killed_after_the_first_epoch(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if len(self.top1) == 2:
            raise RuntimeError("killed")  # before the checkpoints of epoch 2 are written

    monkeypatch.setattr(ValidationHistory, "on_validation_epoch_end", killed_after_the_first_epoch)
    killed = run(compose_config("quantize", overrides, tmp_path))
    assert killed["status"] == "failed" and killed["reason"] == "RuntimeError: killed"
    (last,) = tmp_path.glob("qat/*/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=False)["epoch"] == 0
    monkeypatch.setattr(ValidationHistory, "on_validation_epoch_end", original)
    with caplog.at_level("INFO"):
        resumed = run(compose_config("quantize", overrides, tmp_path))
    assert resumed["status"] == "ok", resumed["reason"]
    assert f"resuming from {last}" in caplog.text
    assert "epoch 2/2" in caplog.text and "epoch 1/2" not in caplog.text  # only the second epoch ran again
    assert resumed["qat_epochs"] == 2 and len(resumed["qat_val_history"]) == 2  # the first epoch's entry came back


def test_without_a_validation_split_the_last_epoch_is_kept_and_the_trained_model_exports(
    tmp_path: Path, weights_file: Path
):
    cell = run(compose_config("quantize", [*SHORT, f"checkpoint={weights_file}", "bits=4", "quant.epochs=1",
                                           "data.val_size=0", "export=onnx"], tmp_path))  # fmt: skip
    assert cell["status"] == "ok", cell["reason"]
    assert cell["onnx_status"] == "ok" and cell["onnx_agreement"] >= 90  # learned step sizes on ONNX Runtime
    assert (cell["qat_chosen_epoch"], cell["qat_val_history"], cell["qat_val_top1"]) == (1, [], None)
    assert (cell["qat_start_val_top1"], cell["qat_still_rising"]) == (None, None)
    assert "val_top1" not in cell
    assert cell["reason"].endswith("epoch 1 (no validation split: last epoch)")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["quant.w_bits=1"], "quant.w_bits=1 is not supported; expected an integer from 2 to 16."),
        (["bits=20"], "quant.w_bits=20 is not supported; expected an integer from 2 to 16."),
        (["checkpoint=/nonexistent/weights.pt"], "checkpoint='/nonexistent/weights.pt' does not exist"),
        (["quant.epochs=0"], "quant.epochs=0 is out of range"),
    ],
)
def test_bad_input_fails_the_cell_with_the_same_reason_as_other_methods(compose_in, weights_file, overrides, message):
    result = run(compose_in("quantize", [*SHORT, f"checkpoint={weights_file}", *overrides]))
    assert result["status"] == "failed" and message in result["reason"]


def test_a_checkpoint_trained_on_the_validation_images_is_refused(tmp_path: Path):
    from qexp.models import resnet20

    path = tmp_path / "weights.pt"
    save_weights(path, resnet20(), arch="resnet20", meta={"val_size": 0, "split_seed": 0})
    result = run(compose_config("quantize", [*SHORT, f"checkpoint={path}", "bits=4"], tmp_path / "cell"))
    assert result["status"] == "failed"
    assert result["reason"].startswith("the checkpoint was trained with data.val_size=0 held out, but this run")
    assert json.loads((tmp_path / "cell" / "result.json").read_text())["reason"] == result["reason"]
