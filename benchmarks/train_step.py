"""Time per training step: qexp's Lightning path against a bare PyTorch loop doing the same maths.

    python benchmarks/train_step.py --steps 60 --warmup 10

Both paths train ResNet20 from the same in-memory uint8 batches with the same batch
augmentation, bf16 autocast, channels_last, SGD + Nesterov and per-step LR schedule; the
difference is Lightning's loop, logging, metrics and EMA bookkeeping. Prints both rates and
qexp's time per step divided by the bare loop's (goal: <= 1.15).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from qexp.data import CIFAR10DataModule
from qexp.models import resnet20
from qexp.training.module import Classifier, split_weight_decay, warmup_cosine


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def datamodule(steps: int, batch_size: int) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(
        source="synthetic", batch_size=batch_size, val_size=0, calib_size=1,
        synthetic_sizes=((steps + 1) * batch_size, 16), cutout_size=16,
    )  # fmt: skip
    dm.setup()
    return dm


def time_qexp(steps: int, warmup: int, batch_size: int) -> float:
    dm = datamodule(steps, batch_size)
    optimizer = partial(torch.optim.SGD, lr=0.2, momentum=0.9, nesterov=True)
    module = Classifier(resnet20(), optimizer, ema_decay=0.999)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=steps, precision="bf16-mixed", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, dm)
    return (timer.end - timer.start) / (steps - warmup)


def time_bare(steps: int, warmup: int, batch_size: int) -> float:
    dm = datamodule(steps, batch_size)
    model = resnet20().to(memory_format=torch.channels_last)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999))
    optimizer = torch.optim.SGD(split_weight_decay(model, 5e-4), lr=0.2, momentum=0.9, nesterov=True)
    # Classifier's schedule for one epoch of ``steps`` with 3 warm-up epochs of the default recipe: all warm-up.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, 3 * steps))
    model.train()
    start = 0.0
    for step, (images, labels) in enumerate(dm.train_dataloader()):
        if step == warmup:
            start = time.perf_counter()
        if step == steps:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(dm.transform(images, train=True)), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
    return (time.perf_counter() - start) / (steps - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    bare = time_bare(args.steps, args.warmup, args.batch_size)
    qexp = time_qexp(args.steps, args.warmup, args.batch_size)
    print(f"threads {torch.get_num_threads()}, batch {args.batch_size}, {args.steps - args.warmup} timed steps")
    print(f"bare loop : {1 / bare:6.2f} steps/s ({bare * 1000:.0f} ms/step)")
    print(f"qexp      : {1 / qexp:6.2f} steps/s ({qexp * 1000:.0f} ms/step)")
    print(f"ratio qexp/bare time per step: {qexp / bare:.3f}")


if __name__ == "__main__":
    main()
