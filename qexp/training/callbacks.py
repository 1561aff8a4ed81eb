"""Training callbacks: a one-line-per-epoch log that survives resumption, and its clock."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class EpochLog(L.Callback):
    """Log one line per epoch and count training wall time across resumed runs.

    The progress bar is switched off when stdout is not a terminal (nohup, CI) because it
    floods log files; this line is what a background run shows instead. The accumulated
    seconds live in the checkpoint, so a run resumed in a later session reports its total.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation has run by now and the epoch's training metrics are aggregated.
        elapsed = time.perf_counter() - self._epoch_start
        self.seconds += elapsed
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        log.info(
            "epoch %d/%d %s | %.1f s (total %.1f min)",
            trainer.current_epoch + 1, trainer.max_epochs, shown, elapsed, self.seconds / 60,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = state_dict["seconds"]
