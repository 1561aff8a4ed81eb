"""precision: auto resolves from the hardware; an explicit precision always wins."""

import pytest

from qexp import precision
from qexp.precision import resolve_precision


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, "32-true"),  # AMD EPYC with AVX2 only: bf16 would be emulated, 15x slower
        ({"avx512f", "avx512_bf16"}, "bf16-mixed"),
        ({"avx512f", "amx_bf16", "amx_tile"}, "bf16-mixed"),
        (set(), "32-true"),  # flags unreadable: the safe choice
    ],
)
def test_auto_follows_the_cpus_native_bf16(monkeypatch, cpu_only, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert resolve_precision("auto") == expected


def test_an_explicit_precision_wins(monkeypatch, cpu_only):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert resolve_precision("bf16-mixed") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    assert resolve_precision("32-true") == "32-true"
    assert resolve_precision(32) == "32"


def test_auto_on_a_gpu_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("auto") == "32-true"  # a pre-Ampere GPU, however capable the CPU
    assert resolve_precision("auto", accelerator="cpu") == "bf16-mixed"


def test_the_training_configs_default_to_auto(compose_in):
    assert compose_in("train", []).trainer.precision == "auto"
    assert compose_in("quantize", ["quant=qat"]).quant.trainer.precision == "auto"
