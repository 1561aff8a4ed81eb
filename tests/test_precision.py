"""precision: auto resolves from the hardware; an explicit precision always wins."""

import pytest

from qexp.training import precision
from qexp.training.precision import resolve_precision


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


def test_a_run_resumed_on_another_cpu_says_which_precision_trained_which_epochs():
    from qexp.training.precision import precision_spans

    def epoch(n, package="qexp.training."):
        return f"[2026-12-02 03:38:26,633][{package}callbacks][INFO] - epoch {n}/200 train/acc 0.7497 | 185.5 s"

    # A run started before the modules moved to qexp/training/ logs as qexp.callbacks and qexp.precision.
    log = "\n".join(
        [
            epoch(1, "qexp."),  # an older run logged no choice
            "[2026-12-02 00:52:13,864][qexp.precision][INFO] - precision=auto: 32-true on cpu (native bf16: False)",
            epoch(2, "qexp."),
            epoch(3, "qexp."),
            "[2026-12-02 00:53:00,000][qexp.training.fit][INFO] - resuming from last.ckpt",
            "[2026-12-02 06:14:00,738][qexp.training.precision][INFO] - "
            "precision=auto: bf16-mixed on cpu (native bf16: True)",
            epoch(4),
            epoch(5),
            "[2026-12-02 07:00:00,000][qexp.training.precision][INFO] - precision: 32-true (as configured)",
            epoch(6),
        ]
    )
    assert precision_spans(log) == [
        {"precision": "unknown", "first_epoch": 1, "last_epoch": 1},
        {"precision": "32-true", "first_epoch": 2, "last_epoch": 3},
        {"precision": "bf16-mixed", "first_epoch": 4, "last_epoch": 5},
        {"precision": "32-true", "first_epoch": 6, "last_epoch": 6},
    ]
    assert precision_spans("") == []
