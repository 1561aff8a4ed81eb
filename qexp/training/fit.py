"""A Lightning fit that a killed run continues: what training and QAT fine-tuning share.

Both write a checkpoint every epoch into ``<directory>/checkpoints/`` and, re-run with the same
directory, continue from its ``last.ckpt``; both log to ``<directory>/csv`` and show a progress bar
only on a terminal (under nohup or CI a bar is a flood of carriage returns). Which checkpoints to
keep is the caller's choice, so each passes its own ``ModelCheckpoint`` callbacks.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from qexp.training.precision import resolve_precision

log = logging.getLogger(__name__)


def fit_resumably(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer_cfg: DictConfig,
    directory: Path,
    callbacks: list[L.Callback],
    resume: bool,
    **trainer_overrides: Any,
) -> L.Trainer:
    """Fit ``module`` with the ``lightning.Trainer`` that ``trainer_cfg`` describes; return the trainer.

    With ``resume``, an existing ``<directory>/checkpoints/last.ckpt`` is continued: the epoch,
    optimizer, schedule and callbacks' states come back. ``trainer_overrides`` (e.g. ``max_epochs``)
    are passed to the Trainer over ``trainer_cfg``. ``precision: auto`` is resolved from the hardware
    (``qexp.training.precision``) before the Trainer sees it.
    """
    interactive = sys.stdout.isatty()
    if interactive:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=20)]
    precision = resolve_precision(trainer_cfg.get("precision", "32-true"), trainer_cfg.get("accelerator", "auto"))
    trainer = instantiate(
        trainer_cfg,
        precision=precision,
        default_root_dir=directory,
        logger=CSVLogger(directory, name="csv"),
        callbacks=callbacks,
        enable_progress_bar=interactive,
        **trainer_overrides,
    )
    last = directory / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    # The checkpoint is one qexp wrote into its own directory; its hyper-parameters hold the
    # optimizer's partial (a Hydra partial in training), which a weights-only load refuses.
    trainer.fit(module, datamodule, ckpt_path=ckpt_path, weights_only=False)
    return trainer
