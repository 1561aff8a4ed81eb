"""Every config group option composes, and the composed configs build what they name."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from qexp.data import CIFAR10DataModule
from qexp.quant import PTQConfig, ptq_config
from tests.conftest import CONF


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("trainer", options("trainer"))
def test_train_config_composes(compose_in, data, trainer):
    cfg = compose_in("train", [f"data={data}", f"trainer={trainer}"])
    assert cfg.trainer.max_epochs >= 1
    module = instantiate(cfg.data)
    assert isinstance(module, CIFAR10DataModule) and module.source == cfg.data.source


def test_reference_experiment_is_the_documented_recipe(compose_in):
    cfg = compose_in("train", ["experiment=reference"])
    assert cfg.data.source == "cifar10_folder" and cfg.trainer.max_epochs == 200
    assert cfg.optim.ema_decay == 0.999 and cfg.data.cutout_size == 15
    assert cfg.export_path == "outputs/reference/weights.pt"  # never over the shipped checkpoint


@pytest.mark.parametrize("quant", options("quant"))
@pytest.mark.parametrize("observer", options("observer"))
def test_quantize_config_composes(compose_in, quant, observer):
    cfg = compose_in("quantize", [f"quant={quant}", f"observer={observer}", "bits=4", "quant.a_bits=8"])
    assert cfg.quant.method == quant and cfg.quant.observer == observer
    if quant != "none":
        assert (cfg.quant.w_bits, cfg.quant.a_bits) == (4, 8)


def test_the_percentile_is_the_percentile_observers_setting(compose_in):
    cfg = compose_in("quantize", ["observer=percentile", "quant.percentile=99.9"])
    assert ptq_config(cfg.quant).percentile == 99.9
    assert "percentile" not in compose_in("quantize", ["observer=mse"]).quant  # no setting that nothing reads
    assert ptq_config(compose_in("quantize", ["observer=percentile"]).quant).percentile == PTQConfig.percentile


def test_qat_trains_with_the_short_cpu_trainer_for_its_own_epochs(compose_in):
    quant = compose_in("quantize", ["quant=qat", "quant.epochs=3"]).quant
    short = OmegaConf.to_container(OmegaConf.load(CONF / "trainer" / "cpu_short.yaml"))
    own = OmegaConf.to_container(OmegaConf.load(CONF / "quant" / "qat.yaml").trainer)  # what qat.yaml adds
    assert OmegaConf.to_container(quant.trainer) == {**short, **own}
    assert quant.trainer.max_epochs == quant.epochs == 3 and quant.trainer.precision == "auto"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_builds_its_model(compose_in, experiment):
    extra = ["teacher.checkpoint=t.pt"] if experiment == "distill" else []
    cfg = compose_in("train", [f"experiment={experiment}", *extra])
    image = torch.zeros(1, 3, 32, 32)
    assert instantiate(cfg.model)(image).shape == (1, 10)
    if cfg.get("teacher") is not None:
        assert instantiate(cfg.teacher.model)(image).shape == (1, 10)


def test_final_experiment_is_the_reference_recipe_on_the_held_out_split(compose_in):
    cfg = compose_in("train", ["experiment=final"])
    assert cfg.trainer.max_epochs == 200 and cfg.data.val_size == 5000 and cfg.data.cutout_size == 15
    assert cfg.optim.label_smoothing == 0.1 and cfg.optim.ema_decay == 0.999 and cfg.get("teacher") is None
    assert cfg.trainer.precision == "auto"
    # exported beside its run; it becomes the shipped file only once validation has chosen it
    assert OmegaConf.to_container(cfg)["export_path"] == "${output_dir}/weights.pt"


def test_the_distilled_run_differs_from_the_final_one_only_by_its_teacher(compose_in):
    final, distilled = (
        OmegaConf.to_container(compose_in("train", [f"experiment={name}"])) for name in ("final", "final_distill")
    )
    changed = {key for key in final.keys() | distilled.keys() if final.get(key) != distilled.get(key)}
    assert changed == {"teacher", "optim"}
    optim = final["optim"].keys() | distilled["optim"].keys()
    assert {k for k in optim if final["optim"].get(k) != distilled["optim"].get(k)} == {"label_smoothing"}
    teacher = distilled["teacher"]
    assert teacher["checkpoint"] == "outputs/teacher/weights.pt" and teacher["flip_average"] is True
    assert distilled["data"]["cutout_size"] == 15 and distilled["trainer"]["max_epochs"] == 200
