"""The LightningModule that trains a classifier, with an exponential moving average of its weights.

The EMA copy is evaluated with BatchNorm statistics re-estimated on training batches: averaging
weights invalidates the running statistics that were collected for the raw weights, and an EMA
evaluated with stale statistics can look worse than the model it averages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassAccuracy


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def split_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: conv/linear weights decay, biases and BatchNorm affines do not."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> None:
    """Replace every BatchNorm's running statistics by their plain average over ``batches``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average instead of an exponential one
    was_training = model.training
    model.train()
    for images in batches:
        model(images)
    model.train(was_training)
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum


class Classifier(L.LightningModule):
    """Cross-entropy training with label smoothing, SGD, warm-up + cosine, optional EMA."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        weight_decay: float = 5e-4,
        warmup_epochs: float = 3.0,
        label_smoothing: float = 0.1,
        ema_decay: float | None = None,
        bn_batches: int = 20,
        num_classes: int = 10,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model.to(memory_format=torch.channels_last)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
        if compile:
            self.model.compile()  # in place, so state_dict keys keep their names
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_ema_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_ema_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _refresh_ema_batchnorm(self) -> None:
        if self.ema is not None and self.trainer.datamodule is not None:
            batches = self.trainer.datamodule.augmented_batches(self.hparams.bn_batches, self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast):
                recompute_batchnorm(self.ema, batches)

    @property
    def _autocast(self) -> bool:
        return "bf16" in str(self.trainer.precision)

    def on_validation_epoch_start(self) -> None:
        self._refresh_ema_batchnorm()

    def on_test_epoch_start(self) -> None:
        self._refresh_ema_batchnorm()

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        metric = getattr(self, f"{stage}_acc")
        metric(self.model(images), labels)
        self.log(f"{stage}/acc", metric, prog_bar=True)
        if self.ema is not None:
            ema_metric = getattr(self, f"{stage}_ema_acc")
            ema_metric(self.ema(images), labels)
            self.log(f"{stage}/ema_acc", ema_metric, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict:
        groups = split_weight_decay(self.model, self.hparams.weight_decay)
        optimizer = self.hparams.optimizer(params=groups)
        total = self.trainer.estimated_stepping_batches
        epochs = self.trainer.max_epochs
        if not epochs or epochs < 1:
            raise ValueError(f"trainer.max_epochs={epochs!r}: the warm-up + cosine schedule needs a number of epochs.")
        warmup = round(self.hparams.warmup_epochs * total / epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
