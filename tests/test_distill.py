"""Distillation: the loss, the frozen teacher, and experiment=distill through the entry point."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict

from qexp.cells.provenance import portable_config
from qexp.cells.weights import load_weights, save_weights
from qexp.models import resnet20, widenet
from qexp.train import train
from qexp.training.module import Classifier, distillation_loss
from tests.conftest import run_module


def logits_and_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(8, 10, generator=generator, requires_grad=True)
    teacher = torch.randn(8, 10, generator=generator, requires_grad=True)
    return student, teacher, torch.randint(0, 10, (8,), generator=generator)


def test_alpha_zero_is_plain_cross_entropy():
    student, teacher, labels = logits_and_labels()
    loss = distillation_loss(student, teacher, labels, alpha=0.0, temperature=4.0, label_smoothing=0.1)
    assert torch.allclose(loss, F.cross_entropy(student, labels, label_smoothing=0.1))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_term_is_kl_of_teacher_to_student_scaled_by_t_squared(temperature: float):
    student, teacher, labels = logits_and_labels()
    p_t = F.softmax(teacher / temperature, dim=1)
    log_p_s = F.log_softmax(student / temperature, dim=1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    loss = distillation_loss(student, teacher, labels, alpha=1.0, temperature=temperature)
    assert torch.allclose(loss, temperature**2 * kl, atol=1e-6)
    mixed = distillation_loss(student, teacher, labels, alpha=0.25, temperature=temperature)
    assert torch.allclose(mixed, 0.25 * temperature**2 * kl + 0.75 * F.cross_entropy(student, labels), atol=1e-6)


def test_gradient_reaches_the_student_only():
    student, teacher, labels = logits_and_labels()
    distillation_loss(student, teacher, labels, alpha=0.9, temperature=4.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_matching_the_teacher_exactly_leaves_only_the_hard_term():
    student, _, labels = logits_and_labels()
    loss = distillation_loss(student, student.detach(), labels, alpha=0.9, temperature=4.0)
    assert torch.allclose(loss, 0.1 * F.cross_entropy(student, labels), atol=1e-6)


def test_teacher_stays_frozen_and_out_of_the_checkpoint():
    torch.manual_seed(0)
    teacher = widenet(widths=(8, 16, 16))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = Classifier(resnet20(), optimizer=torch.optim.SGD, teacher=teacher)
    module.train()  # what Lightning does at the start of every epoch
    assert module.teacher is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") or "_teacher" in k for k in module.state_dict())
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    module.log = lambda *args, **kwargs: None  # no trainer attached
    loss = module.training_step((images, labels), 0)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in module.model.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched too


def test_flip_average_is_the_mean_of_both_views():
    torch.manual_seed(0)
    teacher = widenet(widths=(8, 16, 16)).eval()
    module = Classifier(resnet20(), optimizer=torch.optim.SGD, teacher=teacher, teacher_flip_average=True)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (teacher(images) + teacher(images.flip(-1))) / 2
    assert torch.allclose(module.teacher_logits(images), expected, atol=1e-6)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_weights(
        path,
        widenet(),
        arch="widenet",
        meta={"test_top1": 12.5, "val_top1": {"val/acc": 11.0, "val/ema_acc": 13.0}, "weights": "ema"},
    )
    return path


def test_distill_experiment_trains_a_student_and_records_its_teacher(compose_in, teacher_file: Path):
    overrides = ["experiment=distill", "data=synthetic", "trainer=smoke", f"teacher.checkpoint={teacher_file}"]
    cfg = compose_in("train", overrides)
    meta = train(cfg)
    assert meta["teacher"]["arch"] == "widenet" and meta["teacher"]["test_top1"] == 12.5
    assert meta["teacher"]["alpha"] == 0.9 and meta["teacher"]["temperature"] == 4.0
    assert meta["teacher"]["val_top1"] == 13.0  # of the weights the file holds (EMA)
    student = resnet20()
    assert load_weights(Path(cfg.export_path), student, "resnet20")["teacher"]["arch"] == "widenet"


def test_config_holds_no_absolute_path_of_the_checkout(compose_in):
    cfg = compose_in("train", ["data=synthetic", "trainer=smoke"])
    with open_dict(cfg):
        cfg.output_dir = str(Path.cwd() / "outputs" / "unit-test-run")
    text = OmegaConf.to_yaml(portable_config(cfg))
    assert str(Path.cwd()) not in text and "output_dir: outputs/unit-test-run" in text


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("nowhere.pt", "does not exist"),
        ("foreign", "holds arch 'resnet20'; expected 'widenet'"),
        ("unset", "teacher.checkpoint is not set"),
    ],
)
def test_bad_teacher_is_one_clear_error(tmp_path: Path, weights_file: Path, checkpoint: str, message: str):
    path = {"foreign": weights_file, "unset": None}.get(checkpoint, tmp_path / checkpoint)
    teacher = [f"teacher.checkpoint={path}"] if path else []
    result = run_module(
        "qexp.train", "experiment=distill", "data=synthetic", "trainer=smoke", *teacher,
        f"hydra.run.dir={tmp_path}/run",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
