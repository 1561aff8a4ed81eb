"""The training precision, chosen from the hardware when the config says ``auto``.

bf16 autocast halves the cost of a convolution only where the hardware computes in bf16: a CPU
with AVX512-BF16 or AMX, a GPU of the Ampere generation or later. Elsewhere PyTorch emulates it,
and a ResNet20 training step at batch 256 took 11.7 s in bf16 against 0.77 s in fp32 on a 2-core
AMD EPYC with AVX2 only. So ``precision: auto`` resolves to ``bf16-mixed`` where bf16 is native
and to ``32-true`` elsewhere; any explicit Lightning precision (``trainer.precision=...``) wins.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The feature flags of this machine's CPU (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` (``"cpu"`` or ``"cuda"``) computes bf16 convolutions natively."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def training_device(accelerator: str) -> str:
    """The device type Lightning's ``accelerator`` setting trains on: a GPU when asked or when ``auto`` finds one."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str:
    """``precision`` as Lightning takes it: ``auto`` becomes ``bf16-mixed`` or ``32-true`` for the device.

    Any other value is the user's explicit choice and passes through unchanged.
    """
    if str(precision) != AUTO:
        log.info("precision: %s (as configured)", precision)
        return str(precision)
    device = training_device(accelerator)
    chosen = "bf16-mixed" if native_bf16(device) else "32-true"
    log.info("precision=auto: %s on %s (native bf16: %s)", chosen, device, chosen == "bf16-mixed")
    return chosen


# What resolve_precision and the epoch log (qexp.training.callbacks.EpochLog) write into a run's train.log; a run
# logged before these modules moved to qexp/training/ names them qexp.precision and qexp.callbacks.
_PRECISION_LINE = re.compile(r"\[qexp\.(?:training\.)?precision\]\[INFO\] - precision(?:=auto)?: (\S+)")
_EPOCH_LINE = re.compile(r"\[qexp\.(?:training\.)?callbacks\]\[INFO\] - epoch (\d+)/\d+ ")


def precision_spans(log_text: str) -> list[dict[str, Any]]:
    """Which precision trained which epochs, read from a run's ``train.log``.

    A run resumed on another machine may resolve ``precision: auto`` differently (fp32 on an
    AVX2-only CPU, bf16-mixed where bf16 is native), so one weight file can hold epochs of both;
    each resume logs its choice before its epochs. Epochs logged before any choice (older runs)
    are ``"unknown"``.
    """
    spans: list[dict[str, Any]] = []
    current = "unknown"
    for line in log_text.splitlines():
        if chosen := _PRECISION_LINE.search(line):
            current = chosen.group(1)
        elif epoch := _EPOCH_LINE.search(line):
            number = int(epoch.group(1))
            if spans and spans[-1]["precision"] == current and spans[-1]["last_epoch"] == number - 1:
                spans[-1]["last_epoch"] = number
            else:
                spans.append({"precision": current, "first_epoch": number, "last_epoch": number})
    return spans
