"""Quantization-aware training on the training stack: the Classifier distils the quantized model from the FP32 one.

``fine_tune`` hands a frozen PTQ model, its quantizers swapped for learned-step stand-ins
(``core/lsq.py``), to the same ``Classifier`` that trains the float networks, with the FP32 model as
its teacher: the Classifier sees an ``nn.Module`` and knows nothing of quantization. Lightning
checkpoints every epoch into the cell's directory and a run started again resumes from there;
the epoch with the best validation top-1 is the one returned, so the test split is only read
afterwards, once, by the caller.

Validation, and so the choice of epoch, is in fp32 whatever the training precision: the reported
figures are fp32 evaluations, and a bf16 validation once chose an epoch 0.6 points away from its fp32
figure. It is the Classifier's ``fp32_validation`` switch, not a callback here, because a callback
cannot change the precision of the step Lightning runs: it could only evaluate the split a second
time beside Lightning's bf16 pass, twice the work for two figures an epoch, one to ignore. The switch
makes the one validation pass the fp32 one, so the checkpoint that monitors ``val/acc``, the history,
the epoch log and ``limit_val_batches`` all see it unchanged; it is off by default, so float training
keeps its validation as it was.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from torch import nn

from qexp.cells.evaluate import top1
from qexp.data import CIFAR10DataModule
from qexp.errors import QexpError
from qexp.quant.core.lsq import freeze_step_sizes, learn_step_sizes
from qexp.training.callbacks import EpochLog
from qexp.training.fit import fit_resumably
from qexp.training.module import Classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QATConfig:
    """How the PTQ model is fine-tuned (``conf/quant/qat.yaml``): SGD with Nesterov momentum, warm-up + cosine."""

    epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-3  # weights and step sizes alike: LSQ's gradient scale balances them
    momentum: float = 0.9
    weight_decay: float = 5e-5  # conv/linear weights only
    warmup_epochs: float = 0.5
    alpha: float = 0.9  # weight of the distillation term
    temperature: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "epochs": isinstance(self.epochs, int) and self.epochs >= 1,
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "alpha": 0 <= self.alpha <= 1,
            "temperature": self.temperature > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise QexpError(
                    f"quant.{name}={getattr(self, name)!r} is out of range; expected integer epochs and batch_size "
                    ">= 1, lr and temperature > 0, momentum in [0, 1), weight_decay and warmup_epochs >= 0, alpha "
                    "in [0, 1]."
                )


class QATRun(NamedTuple):
    """What ``fine_tune`` returns: the model at the chosen epoch and what ``result.json`` says of the training."""

    model: nn.Module  # quantizers frozen again with the learned scales, on the CPU, in eval mode
    epochs: int  # epochs trained, across resumed runs
    seconds: float  # training time, across resumed runs
    val_top1: list[float]  # validation top-1 (%, fp32) of each validation run; empty without a validation split
    chosen_epoch: int  # 1-based: the best validation top-1 (the first of equals), or the last epoch without one
    chosen_val_top1: float | None  # the chosen epoch's validation top-1 (%); None without a validation split
    start_val_top1: float | None  # the model it started from (epoch 0), validation top-1 (%, fp32); None without one
    still_rising: bool | None  # whether the curve ends at its best (``still_rising``); None without a validation split


def still_rising(start: float, history: list[float]) -> bool:
    """Whether a validation curve that starts at ``start`` (epoch 0) and goes on with ``history`` ends at its best.

    True when the last epoch beats every earlier one (with one epoch: beats the start), so that the
    last epoch is the one kept and more epochs may well do better.
    """
    return bool(history) and history[-1] > max(history[:-1], default=start)


class ValidationHistory(L.Callback):
    """The validation top-1 after every epoch, kept in the checkpoints so that a resumed run knows all of them."""

    def __init__(self) -> None:
        self.top1: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation ends before the training epoch does, so the epoch's checkpoint saves the entry;
        # appending here (not at every training epoch's end) keeps one entry per validation run.
        if trainer.sanity_checking:  # a few batches before training (num_sanity_val_steps): not an epoch
            return
        value = trainer.callback_metrics.get("val/acc")
        if value is not None:
            self.top1.append(100 * float(value))

    def state_dict(self) -> dict[str, Any]:
        return {"top1": list(self.top1)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.top1 = list(state_dict["top1"])


def fine_tune(
    student: nn.Module,
    teacher: nn.Module,
    datamodule: CIFAR10DataModule,
    config: QATConfig,
    trainer_cfg: DictConfig,
    directory: Path,
    resume: bool = True,
) -> QATRun:
    """Fine-tune ``student``, a frozen PTQ model (changed in place), on the training split, distilled from ``teacher``.

    ``trainer_cfg`` is a ``lightning.Trainer`` config (``quant.trainer``); its ``max_epochs`` is
    ``config.epochs``. ``directory`` receives the epoch log (``csv/``) and the checkpoints
    (``checkpoints/``): ``last.ckpt`` after every epoch (``resume`` continues from it) and
    ``best.ckpt``, the epoch with the best validation top-1, which is the model returned.
    Validation is in fp32 (the module docstring says why), the start included: ``student``'s own
    validation top-1 is measured first, through ``qexp.cells.evaluate`` as every cell's ``val_top1`` is.
    When the last epoch is the best one a warning says that the curve was still rising.
    ``teacher`` is frozen and put in eval mode.
    """
    val = datamodule.splits.get("val")
    start_top1 = None if val is None else top1(student, val, datamodule.normalize, datamodule.eval_batch_size)
    L.seed_everything(config.seed, workers=True)
    data = copy.copy(datamodule)  # the caller's module keeps its batch size
    data.batch_size = config.batch_size
    module = Classifier(
        learn_step_sizes(student.requires_grad_(True).train()),  # train mode: nothing in it but what trains
        optimizer=partial(torch.optim.SGD, lr=config.lr, momentum=config.momentum, nesterov=True),
        teacher=teacher,
        distill_alpha=config.alpha,
        distill_temperature=config.temperature,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=0.0,  # the teacher's soft targets already smooth the labels
        fp32_validation=True,
    )
    checkpoints = directory / "checkpoints"
    history, clock = ValidationHistory(), EpochLog()
    callbacks: list[L.Callback] = [history, clock]
    best = None
    if "val" in datamodule.splits:
        best = ModelCheckpoint(
            dirpath=checkpoints, filename="best", monitor="val/acc", mode="max", save_top_k=1,
            save_on_train_epoch_end=True,
        )  # fmt: skip
        callbacks.append(best)
    # A monitored checkpoint is written only when validation improves: this one writes last.ckpt
    # after every epoch (save_top_k=0 would write it only when training ends). Both save at the
    # epoch's end, after the history and the clock have counted it.
    callbacks.append(ModelCheckpoint(dirpath=checkpoints, save_last=True, save_top_k=1, save_on_train_epoch_end=True))
    trainer = fit_resumably(module, data, trainer_cfg, directory, callbacks, resume, max_epochs=config.epochs)
    chosen, chosen_top1 = trainer.current_epoch, None
    if best is not None and best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        chosen, chosen_top1 = state["epoch"] + 1, 100 * float(best.best_model_score)
    rising = None if start_top1 is None else still_rising(start_top1, history.top1)
    if rising:
        log.warning(
            "QAT: the best validation epoch is the last one, epoch %d (%.2f %%; the start %.2f %%): the curve was "
            "still rising, and more epochs (quant.epochs above %d) may help.",
            chosen, history.top1[-1], start_top1, trainer.current_epoch,
        )  # fmt: skip
    model = freeze_step_sizes(module.model).cpu().eval()
    return QATRun(
        model, trainer.current_epoch, round(clock.seconds, 1), history.top1, chosen, chosen_top1, start_top1, rising
    )
