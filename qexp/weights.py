"""The plain weight file that training exports and quantization loads.

A Lightning checkpoint carries optimizer state and pickled hyper-parameters; what PTQ needs is
the float ``state_dict`` plus where it came from. The file is a dict of tensors and plain
values, so ``torch.load(weights_only=True)`` reads it without executing pickled code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qexp.atomic import write_atomically
from qexp.data import CIFAR10DataModule
from qexp.errors import QexpError
from qexp.models import dead_residual_channels

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "assets" / "resnet20_cifar10_jpeg.pt"


def arch_name(model_cfg: Mapping[str, Any]) -> str:
    """The architecture recorded in a weight file: the model factory's name, e.g. ``resnet20``."""
    return str(model_cfg["_target_"]).rsplit(".", 1)[-1]


def save_weights(path: Path, model: nn.Module, arch: str, meta: dict[str, Any]) -> None:
    """Write ``{"arch", "state_dict", "meta"}`` atomically (a temporary file, then rename)."""
    state = {k.replace("_orig_mod.", ""): v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomically(path, lambda tmp: torch.save({"arch": arch, "state_dict": state, "meta": meta}, tmp))


def load_weights(path: Path, model: nn.Module, arch: str) -> dict[str, Any]:
    """Load an exported file into ``model``; return its metadata. Clear errors for bad files."""
    if not path.is_file():
        raise QexpError(
            f"checkpoint={str(path)!r} does not exist; expected a weight file written by python -m qexp.train."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise QexpError(
            f"checkpoint={str(path)!r} could not be read ({type(error).__name__}); expected a "
            "weight file written by python -m qexp.train."
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise QexpError(f"checkpoint={str(path)!r} is not a qexp weight file (no 'state_dict').")
    if payload.get("arch") != arch:
        raise QexpError(f"checkpoint={str(path)!r} holds arch {payload.get('arch')!r}; expected {arch!r}.")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise QexpError(f"checkpoint={str(path)!r} does not fit {arch}: {first}") from None
    warn_if_narrow(path, model)
    return dict(payload.get("meta", {}))


def warn_if_narrow(path: Path, model: nn.Module) -> None:
    """Log a warning when ``model`` has residual channels that its weights cut off (``bn2`` scale 0).

    Quantizing such a network measures a narrower model than ResNet20; it is allowed (the narrow
    baseline is kept on purpose) but never silently.
    """
    dead = dead_residual_channels(model)
    if dead:
        total = sum(len(channels) for channels in dead.values())
        blocks = ", ".join(f"{name} ({len(channels)})" for name, channels in dead.items())
        log.warning(
            "checkpoint=%r has %d dead residual channels (bn2 scale exactly 0) in %s: the network is narrower "
            "than its architecture, as ResNet20s trained with a zero-initialised bn2 behind option-A shortcuts are.",
            str(path), total, blocks,
        )  # fmt: skip


def checkpoint_path(checkpoint: str | None) -> Path:
    """The weight file an entry point's ``checkpoint`` names; ``null`` names the shipped one."""
    return Path(checkpoint) if checkpoint else SHIPPED


def training_data(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``data`` config a weight file's model was trained with (empty for a file from elsewhere)."""
    if not isinstance(meta.get("config"), str):
        return {}
    return OmegaConf.create(meta["config"]).get("data") or {}


def check_held_out(meta: Mapping[str, Any], datamodule: CIFAR10DataModule) -> None:
    """``QexpError`` unless ``datamodule``'s validation split is the one the checkpoint was trained without.

    Quantization settings and the QAT epoch are chosen on that split; images the float model was
    trained on would flatter every candidate and make the choice one of noise. Files record
    ``val_size`` and ``split_seed``; older ones (the shipped reference run) only their resolved
    training config, which says the same in ``data.val_size`` and ``data.seed``. A file that says
    neither is taken at its word; ``data.val_size=0`` validates nothing, so it is always safe.
    CIFAR-10 from torchvision and the JPEG mirror hold the same training images in another
    order, so a split cannot be rebuilt across them; synthetic data shares no image with either.
    """
    data = training_data(meta)
    trained_on = data.get("source", datamodule.source)
    if datamodule.val_size == 0:
        return
    if trained_on != datamodule.source:
        if "synthetic" in (trained_on, datamodule.source):
            return
        raise QexpError(
            f"the checkpoint was trained on data.source={trained_on!r}, and its held-out split cannot be rebuilt "
            f"from data.source={datamodule.source!r} (the same training images in another order): validation "
            f"would score images it trained on. Run with data={trained_on}, or with data.val_size=0 to validate "
            "nothing (QAT then keeps its last epoch)."
        )
    val_size, seed = meta.get("val_size", data.get("val_size")), meta.get("split_seed", data.get("seed"))
    if val_size is None:
        return
    same_seed = seed is None or val_size == 0 or seed == datamodule.seed
    if val_size == datamodule.val_size and same_seed:
        return
    held_out = f"data.val_size={val_size} data.seed={seed}" if val_size else "data.val_size=0"
    raise QexpError(
        f"the checkpoint was trained with {held_out} held out, but this run validates on data.val_size="
        f"{datamodule.val_size} data.seed={datamodule.seed}: settings and the QAT epoch would be chosen on images "
        f"the FP32 model was trained on. Run with {held_out} (with data.val_size=0 nothing is held out, nothing is "
        "validated and QAT keeps its last epoch)."
    )


def load_trained(cfg: DictConfig, checkpoint: Path) -> tuple[nn.Module, dict[str, Any], CIFAR10DataModule]:
    """The float model of ``cfg.model`` in eval mode with ``checkpoint``'s weights, their metadata, and the set-up data.

    What every entry point that starts from a trained model (quantization, sensitivity) does
    first, including the check that its validation split is the one the model never saw.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = instantiate(cfg.model)
    meta = load_weights(checkpoint, model, arch_name(cfg.model))
    model.eval()
    datamodule: CIFAR10DataModule = instantiate(cfg.data)
    check_held_out(meta, datamodule)
    datamodule.setup()
    return model, meta, datamodule
