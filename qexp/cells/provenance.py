"""Where a number came from: code version, library versions and hardware, for every result file."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

CHECKOUT = Path(__file__).resolve().parents[2]  # the project's root, where the commands run


def git_commit() -> str:
    """The checked-out commit, with ``-dirty`` when the tree has uncommitted changes."""
    root = CHECKOUT
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes; ``"missing"`` when it cannot be read (a cell then fails on its own)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def portable_path(path: Path) -> str:
    """``path`` relative to the checkout when it lies inside it, else as given.

    Result and weight files are committed and shared; an absolute path names one machine's
    checkout and means nothing on another.
    """
    try:
        return str(path.resolve().relative_to(CHECKOUT))
    except ValueError:
        return str(path)


def portable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data, every path inside the checkout written relative to it.

    Hydra resolves output directories to absolute paths; those name one machine's checkout and mean
    nothing in a committed result or weight file.
    """
    checkout = str(CHECKOUT) + "/"

    def relative(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(checkout, "")
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relative(v) for v in value]
        return value

    return relative(OmegaConf.to_container(cfg, resolve=True))


def hardware() -> str:
    """CPU model and core count, plus the GPU when one is visible."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


# Libraries a result may depend on beyond torch: PyTorch's pt2e flow lives in torchao, and the ONNX
# export is written with onnx and measured on onnxruntime.
OPTIONAL_LIBRARIES = ("torchao", "onnx", "onnxruntime")
NOT_INSTALLED = "not installed"


def installed_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """The version of the distribution that provides each of ``modules``, read from its metadata without importing it.

    The distribution's name follows when it is not the module's (``1.20.0 (onnxruntime-gpu)``);
    ``NOT_INSTALLED`` when nothing provides the module.
    """
    providers = metadata.packages_distributions()
    found = {}
    for module in modules:
        names = providers.get(module)
        if not names:
            found[module] = NOT_INSTALLED
            continue
        found[module] = metadata.version(names[0]) + ("" if names[0] == module else f" ({names[0]})")
    return found


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries a result depends on; ``NOT_INSTALLED`` for an absent optional one."""
    import lightning
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "lightning": str(lightning.__version__),
        **installed_versions(OPTIONAL_LIBRARIES),
    }


def run_record(cfg: DictConfig, start: float) -> dict[str, Any]:
    """What every analysis record (``sensitivity.json``, ``anatomy.json``) says of its own run.

    ``start`` is the run's ``time.perf_counter()`` at its beginning: ``seconds`` is its own work.
    """
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git": git_commit(),
        "versions": versions(),
        "hardware": hardware(),
        "threads": torch.get_num_threads(),
    }
