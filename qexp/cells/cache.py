"""What a sweep need not compute twice: a cell already finished, and the FP32 reference of a checkpoint.

A cell's identity is a content hash of what decides its numbers -- the resolved config, minus
where and how fast it runs and what its method never reads, and the bytes of its checkpoint --
so re-running a sweep into the same directory skips the cells that are done and redoes failed,
missing or stale ones (another checkpoint, another setting). The FP32 top-1 depends only on the
checkpoint, the test images and the batch size, so one evaluation serves every cell of a grid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qexp.atomic import write_atomically
from qexp.cells.provenance import file_digest
from qexp.cells.result import RESULT_SCHEMA
from qexp.cells.weights import side_file
from qexp.data import Split

# Config keys that do not change a cell's numbers: where it writes, how many threads, whether to redo, and
# whether it also exports its model (an exported cell is the same cell with the ONNX fields added).
RUN_ONLY_KEYS = ("output_dir", "threads", "redo", "cache_dir", "export")


def checkpoint_digest(checkpoint: Path) -> str:
    """What a checkpoint contributes to a cell's identity: its bytes, and its side file's when it has one.

    A foreign weight file's side file decides how the model is fed (its normalisation), so
    editing it makes another cell; a qexp weight file has none and keeps its plain digest.
    """
    card = side_file(checkpoint)
    return file_digest(checkpoint) + (f" side file {file_digest(card)}" if card.is_file() else "")


def is_float16_cast(quant: DictConfig) -> bool:
    """Whether ``quant`` is PyTorch's 16-bit cell: the float16 cast (``qexp/quant/pytorch/float16.py``), which
    observes nothing."""
    return quant.method == "torch_ptq" and quant.get("flow") != "pt2e" and (quant.w_bits, quant.a_bits) == (16, 16)


def unread_settings(cfg: DictConfig) -> tuple[str, ...]:
    """Dotted keys of a cell's config (``conf/quantize.yaml`` composed) that its method never reads.

    They cannot change the cell's numbers, so they must not tell two cells apart (``cell_key``):
    the float model (``quant=none``) reads neither ``bits`` nor an observer, and the float16 cast
    observes nothing, so ``observer=minmax,mse`` gives one such cell, not two identical ones. Both
    record their observer as ``"none"``.
    """
    observer = ("quant.observer", "quant.percentile")
    if cfg.quant.method == "none":
        return ("bits", *observer)
    if is_float16_cast(cfg.quant):
        return observer
    return ()


def cell_key(cfg: DictConfig, checkpoint: Path) -> str:
    """The content hash that identifies a cell: its resolved config (less ``RUN_ONLY_KEYS`` and the settings its
    method never reads, ``unread_settings``), its checkpoint (``checkpoint_digest``) and
    ``qexp.cells.result.RESULT_SCHEMA``."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in RUN_ONLY_KEYS:
        config.pop(key, None)
    for dotted in unread_settings(cfg):
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.get(parent, {})
        node.pop(key, None)
    text = json.dumps(config, sort_keys=True, default=str) + checkpoint_digest(checkpoint) + f"schema {RESULT_SCHEMA}"
    return hashlib.sha256(text.encode()).hexdigest()


def finished_result(path: Path, key: str, export: str | None = None) -> dict[str, Any] | None:
    """The ``result.json`` at ``path`` when it is ``ok`` for the cell ``key`` (and exported, when ``export`` asks
    for it); None: the cell must run."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or half-written by a killed run: run the cell
        return None
    if result.get("status") == "ok" and result.get("cell_key") == key and (export is None or result.get("onnx_status")):
        return result
    return None


def cached_reference(
    cache_dir: Path, checkpoint: Path, test: Split, batch_size: int, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``measure()`` (the FP32 fields of a cell), computed once per checkpoint, test split and batch size."""
    digest = hashlib.sha256()
    digest.update(checkpoint_digest(checkpoint).encode())
    digest.update(test.images.numpy().tobytes())
    digest.update(test.labels.numpy().tobytes())
    digest.update(str(batch_size).encode())
    path = cache_dir / f"fp32-{digest.hexdigest()[:24]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    measured = measure()
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(measured)))
    return measured
