"""The plain weight file that training exports and quantization loads.

A Lightning checkpoint carries optimizer state and pickled hyper-parameters; what PTQ needs is
the float ``state_dict`` plus where it came from. The file is a dict of tensors and plain
values, so ``torch.load(weights_only=True)`` reads it without executing pickled code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from qexp.atomic import write_atomically
from qexp.data import CIFAR10DataModule
from qexp.errors import QexpError

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
    return dict(payload.get("meta", {}))


def checkpoint_path(checkpoint: str | None) -> Path:
    """The weight file an entry point's ``checkpoint`` names; ``null`` names the shipped one."""
    return Path(checkpoint) if checkpoint else SHIPPED


def load_trained(cfg: DictConfig, checkpoint: Path) -> tuple[nn.Module, dict[str, Any], CIFAR10DataModule]:
    """The float model of ``cfg.model`` in eval mode with ``checkpoint``'s weights, their metadata, and the set-up data.

    What every entry point that starts from a trained model (quantization, sensitivity) does first.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = instantiate(cfg.model)
    meta = load_weights(checkpoint, model, arch_name(cfg.model))
    model.eval()
    datamodule: CIFAR10DataModule = instantiate(cfg.data)
    datamodule.setup()
    return model, meta, datamodule
