"""Shared fixtures: small data sets the tests make themselves, Hydra composition, a weight file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch import nn

from qexp.cells.weights import save_weights
from qexp.data import CLASSES, Split, normalize
from qexp.models import resnet20

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the entry point would, with ``output_dir`` set."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        if "cache_dir" in cfg:
            cfg.cache_dir = str(output_dir / "cache")
    return cfg


def run_module(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would, with one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def recount_top1(model: nn.Module, split: Split, batch_size: int, flip: bool = False) -> float:
    """Top-1 of ``model`` on ``split``, counted here with a plain loop, to check a figure qexp recorded.

    ``batch_size`` is the figure's own (``data.eval_batch_size``), so that both sum the same floats;
    ``flip`` adds each image's logits to its mirror's, as the flip-averaged figure does.
    """
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            images = split.images[start : start + batch_size]
            logits = model(normalize(images))
            if flip:
                logits = logits + model(normalize(images.flip(-1)))
            correct += int((logits.argmax(dim=1) == split.labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(split)


def write_image_folder(root: Path, per_class: int, classes: tuple[str, ...] = CLASSES, suffix: str = ".png") -> Path:
    """``root/{train,test}/<class>/i.png``; image ``i`` of class ``c`` is filled with value ``10 c + i``."""
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.full((32, 32, 3), 10 * label + i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}{suffix}")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"), per_class=6)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) ResNet20 weight file in the format ``qexp.train`` exports."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    save_weights(path, resnet20(), arch="resnet20", meta={"test_top1": 10.0, "data": "synthetic"})
    return path


@pytest.fixture(scope="module")
def model_and_data():
    """ResNet20 with random BatchNorm statistics, two calibration batches and a test batch."""
    from tests.test_fold import randomise_batchnorm

    torch.manual_seed(0)
    model = randomise_batchnorm(resnet20())
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(32, 3, 32, 32, generator=generator) for _ in range(2)]
    return model, calibration, torch.randn(16, 3, 32, 32, generator=generator)


@pytest.fixture
def compose_in(tmp_path: Path) -> Callable[[str, list[str]], DictConfig]:
    return lambda name, overrides: compose_config(name, overrides, tmp_path)
