"""The LightningModule that trains a classifier, with an exponential moving average of its weights
and, optionally, a frozen teacher to distil from.

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


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student, labels)`` (Hinton et al. 2015).

    ``p = softmax(logits / T)``. The ``T^2`` keeps the soft term's gradient on the scale of the
    hard term's whatever the temperature, so ``alpha`` means the same at every ``T``. The teacher's
    logits are detached: no gradient reaches the teacher. Shapes: logits ``N x C``, labels ``N``.
    """
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=1),
        F.log_softmax(teacher_logits.detach().float() / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * temperature**2 * soft + (1 - alpha) * hard


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


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with no parameter requiring a gradient (in place; returned for chaining)."""
    model.requires_grad_(False)
    return model.eval()


class Classifier(L.LightningModule):
    """Cross-entropy training with label smoothing, SGD, warm-up + cosine, optional EMA and teacher.

    With a ``teacher`` the loss is ``distillation_loss``: the teacher sees the same augmented
    batch as the student (consistent targets), runs in eval mode under ``no_grad`` and is kept out
    of the module's parameters and checkpoints (it is an input, like the data). Which network the
    teacher is does not matter here.

    ``fp32_validation`` makes the validation step compute in float32 whatever the training precision
    (Lightning runs it inside the ``bf16-mixed`` autocast otherwise), so that ``val/acc`` is what an
    fp32 evaluation (``qexp.cells.evaluate``) of the same model counts: QAT chooses its epoch on it. Off by
    default, so that a training run's validation curve keeps meaning what it meant when it started.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        teacher: nn.Module | None = None,
        distill_alpha: float = 0.9,
        distill_temperature: float = 4.0,
        teacher_flip_average: bool = False,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 3.0,
        label_smoothing: float = 0.1,
        ema_decay: float | None = None,
        bn_batches: int = 20,
        num_classes: int = 10,
        compile: bool = False,
        fp32_validation: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "teacher"], logger=False)
        self.model = model.to(memory_format=torch.channels_last)
        # A plain tuple hides the teacher from nn.Module: not trained, not saved, never put in train mode.
        self._teacher = (freeze(teacher.to(memory_format=torch.channels_last)),) if teacher is not None else ()
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
        if compile:
            self.model.compile()  # in place, so state_dict keys keep their names
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_ema_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_ema_acc = MulticlassAccuracy(num_classes, average="micro")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        """The frozen teacher's logits, averaged over the left-right flip when asked."""
        logits = self.teacher(images)
        if self.hparams.teacher_flip_average:
            logits = (logits + self.teacher(images.flip(-1))) / 2
        return logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self.model(images)
        if self.teacher is None:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        else:
            loss = distillation_loss(
                logits,
                self.teacher_logits(images),
                labels,
                self.hparams.distill_alpha,
                self.hparams.distill_temperature,
                self.hparams.label_smoothing,
            )
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
        if not self.hparams.fp32_validation:
            self._evaluate(batch, "val")
            return
        images, labels = batch
        # Autocast off inside Lightning's, and float32 inputs: the logits an fp32 evaluation computes.
        with torch.autocast(images.device.type, enabled=False):
            self._evaluate((images.float(), labels), "val")

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
