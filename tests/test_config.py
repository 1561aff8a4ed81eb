"""Every config group option composes, and the composed configs build what they name."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from qexp.data import CIFAR10DataModule
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
    assert Path(cfg.export_path).name == "resnet20_cifar10_jpeg.pt"


@pytest.mark.parametrize("quant", options("quant"))
@pytest.mark.parametrize("observer", options("observer"))
def test_quantize_config_composes(compose_in, quant, observer):
    cfg = compose_in("quantize", [f"quant={quant}", f"observer={observer}", "bits=4", "quant.a_bits=8"])
    assert cfg.quant.method == quant and cfg.quant.observer == observer
    if quant != "none":
        assert (cfg.quant.w_bits, cfg.quant.a_bits) == (4, 8)
