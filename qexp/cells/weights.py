"""The plain weight file that training exports and quantization loads, and foreign ones beside it.

A Lightning checkpoint carries optimizer state and pickled hyper-parameters; what PTQ needs is
the float ``state_dict`` plus where it came from. The file is a dict of tensors and plain
values, so ``torch.load(weights_only=True)`` reads it without executing pickled code.

A ResNet20 trained elsewhere is a plain ``state_dict`` (or ``{"state_dict": ...}``) that says
nothing about itself, so it comes with a *side file*, ``<weights>.json`` beside it, that says
what the weights cannot: the architecture, the input normalisation it was trained with, how its
keys map onto ours, and how many training images it never saw (``FOREIGN_CARD_FIELDS``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qexp.atomic import write_atomically
from qexp.cells.provenance import file_digest, portable_path
from qexp.data import CIFAR10_NORMALIZATION, CIFAR10DataModule, Normalization
from qexp.errors import QexpError
from qexp.models import dead_residual_channels

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parents[1] / "assets" / "resnet20_cifar10_jpeg.pt"
# The side file of a foreign weight file: each field, and what it says.
FOREIGN_CARD_FIELDS = {
    "arch": "the model factory, e.g. 'resnet20' (required)",
    "normalization": "{'mean': [r, g, b], 'std': [r, g, b]} in [0, 1] pixel units (required)",
    "val_size": "training images the model never saw: 0 when it trained on all of them (required)",
    "rename": "{'old prefix': 'new prefix'} applied to the keys after a leading 'module.' is dropped",
    "sha256": "the weight file's sha256; when given, a different file is refused",
    "source": "where the weights come from, written into every result",
    "trained_on": "the data it was trained on, in words",
}


def arch_name(model_cfg: Mapping[str, Any]) -> str:
    """The architecture recorded in a weight file: the model factory's name, e.g. ``resnet20``."""
    return str(model_cfg["_target_"]).rsplit(".", 1)[-1]


def save_weights(path: Path, model: nn.Module, arch: str, meta: dict[str, Any]) -> None:
    """Write ``{"arch", "state_dict", "meta"}`` atomically (a temporary file, then rename)."""
    state = {k.replace("_orig_mod.", ""): v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomically(path, lambda tmp: torch.save({"arch": arch, "state_dict": state, "meta": meta}, tmp))


def load_weights(path: Path, model: nn.Module, arch: str, allow_narrow: bool = False) -> dict[str, Any]:
    """Load an exported file into ``model``; return its metadata. Clear errors for bad files, and for a
    ResNet20 with dead residual channels unless ``allow_narrow`` (then a warning: ``check_width``)."""
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
    if isinstance(payload, dict) and "arch" in payload and "state_dict" in payload:
        state, file_arch, meta = payload["state_dict"], payload["arch"], dict(payload.get("meta", {}))
    else:
        state, file_arch, meta = foreign_weights(path, payload)
    if file_arch != arch:
        raise QexpError(f"checkpoint={str(path)!r} holds arch {file_arch!r}; expected {arch!r}.")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        # "Error(s) in loading state_dict for ResNet:" then one line per kind of mismatch: say the first.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise QexpError(f"checkpoint={str(path)!r} does not fit {arch}: {detail}") from None
    check_width(path, model, allow_narrow)
    return meta


def side_file(path: Path) -> Path:
    """Where a foreign weight file's side file is: ``<weights>.json`` beside it."""
    return path.with_name(path.name + ".json")


def foreign_weights(path: Path, payload: Any) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """A foreign file's ``state_dict`` with our key names, its arch, and metadata from its side file.

    The metadata carry ``normalization`` (which ``load_trained`` hands to the data) and ``val_size``
    (which ``check_held_out`` holds a run to), so a foreign model is fed and validated as it was trained.
    """
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QexpError(
            f"checkpoint={str(path)!r} is neither a qexp weight file nor a state_dict (a dict of tensors, alone or "
            "under 'state_dict'); expected a file written by python -m qexp.train, or a ResNet state_dict."
        )
    card = read_side_file(path)
    digest = file_digest(path)
    if "sha256" in card and card["sha256"] != digest:
        raise QexpError(
            f"checkpoint={str(path)!r} has sha256 {digest}, but its side file {str(side_file(path))!r} "
            f"describes the file with sha256 {card['sha256']}: put the side file beside the file it describes."
        )
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        for old, new in card.get("rename", {}).items():
            if key.startswith(old):
                key = new + key.removeprefix(old)
        renamed[key] = value
    meta = {k: card[k] for k in ("normalization", "val_size", "source", "trained_on") if k in card}
    meta["side_file"] = portable_path(side_file(path))
    return renamed, card["arch"], meta


def read_side_file(path: Path) -> dict[str, Any]:
    """The side file of the foreign weight file ``path``, checked field by field; ``QexpError`` when it is wrong."""
    fields = "; ".join(f"{name}: {meaning}" for name, meaning in FOREIGN_CARD_FIELDS.items())
    card_path = side_file(path)
    if not card_path.is_file():
        raise QexpError(
            f"checkpoint={str(path)!r} is a plain state_dict, not a qexp weight file, and has no side file "
            f"{str(card_path)!r} saying how to use it. Write that JSON file with the fields -- {fields}."
        )
    try:
        card = json.loads(card_path.read_text())
    except ValueError as error:
        raise QexpError(f"the side file {str(card_path)!r} is not valid JSON ({error}).") from None
    missing = (
        [name for name in ("arch", "normalization", "val_size") if name not in card] if isinstance(card, dict) else []
    )
    if not isinstance(card, dict) or missing:
        raise QexpError(f"the side file {str(card_path)!r} lacks {missing or 'everything'}; its fields -- {fields}.")
    normalization_of(card, str(card_path))  # refuses a malformed one now, not in the middle of a run
    if not isinstance(card["val_size"], int) or card["val_size"] < 0:
        raise QexpError(
            f"the side file {str(card_path)!r} has val_size={card['val_size']!r}; expected an integer >= 0."
        )
    return card


def normalization_of(meta: Mapping[str, Any], where: str = "the checkpoint") -> Normalization:
    """The input normalisation a weight file's model was trained with: CIFAR-10's unless its metadata say otherwise."""
    stated = meta.get("normalization")
    if stated is None:
        return CIFAR10_NORMALIZATION
    try:
        mean, std = (tuple(float(v) for v in stated[k]) for k in ("mean", "std"))
    except (KeyError, TypeError, ValueError):
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or not all(0 <= m <= 1 for m in mean) or not all(0 < s <= 1 for s in std):
        raise QexpError(
            f"{where} has normalization={stated!r}; expected {{'mean': [r, g, b], 'std': [r, g, b]}} with each mean "
            "in [0, 1] and each std in (0, 1] (pixel values scaled to [0, 1])."
        )
    return Normalization(mean, std)


def check_width(path: Path, model: nn.Module, allow_narrow: bool) -> None:
    """``QexpError`` when ``model`` has residual channels that its weights cut off (``bn2`` scale 0).

    Quantizing such a network measures a narrower model than ResNet20, as every ResNet20 trained with a
    zero-initialised ``bn2`` behind option-A shortcuts was; ``allow_narrow`` (``allow_narrow=true`` on the
    command line) measures it anyway, with a warning, never silently.
    """
    dead = dead_residual_channels(model)
    if not dead:
        return
    total = sum(len(channels) for channels in dead.values())
    blocks = ", ".join(f"{name} ({len(channels)})" for name, channels in dead.items())
    message = (
        f"checkpoint={str(path)!r} has {total} dead residual channels (bn2 scale exactly 0) in {blocks}: the "
        "network is narrower than its architecture, as ResNet20s trained with a zero-initialised bn2 behind "
        "option-A shortcuts are"
    )
    if not allow_narrow:
        raise QexpError(f"{message}. Expected a full-width network; allow_narrow=true measures it anyway.")
    log.warning("%s.", message)


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
    meta = load_weights(checkpoint, model, arch_name(cfg.model), cfg.get("allow_narrow", False))
    model.eval()
    datamodule: CIFAR10DataModule = instantiate(cfg.data)
    datamodule.normalization = normalization_of(meta)
    check_held_out(meta, datamodule)
    datamodule.setup()
    return model, meta, datamodule
