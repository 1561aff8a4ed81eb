"""``python -m qexp.train``: train a classifier and export its weights for quantization.

Glue only: compose the data module, network and recipe from the config, fit (resuming from
``<output_dir>/checkpoints/last.ckpt`` when it exists), test once, export the weights.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qexp.cells.evaluate import flip_averaged_top1, top1, top1_with_error
from qexp.cells.provenance import git_commit, hardware, portable_config, portable_path, versions
from qexp.cells.weights import arch_name, load_weights, save_weights
from qexp.data import CIFAR10DataModule, normalize
from qexp.errors import QexpError, exit_on_user_error
from qexp.training.callbacks import EpochLog
from qexp.training.fit import fit_resumably
from qexp.training.module import Classifier
from qexp.training.precision import precision_spans

log = logging.getLogger(__name__)


def choose_weights(metrics: dict[str, float]) -> str:
    """``"ema"`` when the EMA scores at least as well as the raw weights on validation.

    Without a validation split there is nothing honest to choose on, and the EMA (the
    recipe's intended output) is taken when it exists.
    """
    if "val/ema_acc" in metrics and "val/acc" in metrics:
        return "ema" if metrics["val/ema_acc"] >= metrics["val/acc"] else "raw"
    return "ema" if "test/ema_acc" in metrics else "raw"


def exported_val_top1(meta: dict[str, Any]) -> float | None:
    """The validation top-1 of the weights a file holds (raw or EMA), from its metadata; None without a split."""
    key = "val/ema_acc" if meta.get("weights") == "ema" else "val/acc"
    return (meta.get("val_top1") or {}).get(key)


def load_teacher(teacher_cfg: DictConfig | None) -> tuple[nn.Module | None, dict[str, Any] | None]:
    """The frozen teacher network of ``experiment=distill`` and what its weight file says of it.

    A missing file, or a file of another architecture than ``teacher.model``, is a ``QexpError``
    from ``load_weights``: one message, no traceback.
    """
    if teacher_cfg is None:
        return None, None
    if OmegaConf.is_missing(teacher_cfg, "checkpoint"):
        raise QexpError(
            "teacher.checkpoint is not set; expected the weight file of the teacher to distil from, e.g. "
            "python -m qexp.train experiment=distill teacher.checkpoint=outputs/teacher/weights.pt."
        )
    teacher = instantiate(teacher_cfg.model)
    path = Path(teacher_cfg.checkpoint)
    meta = load_weights(path, teacher, arch_name(teacher_cfg.model))
    summary = {
        "arch": arch_name(teacher_cfg.model),
        "checkpoint": portable_path(path),
        "val_top1": exported_val_top1(meta),
        "test_top1": meta.get("test_top1"),
        "epochs": meta.get("epochs"),
        "alpha": teacher_cfg.alpha,
        "temperature": teacher_cfg.temperature,
        "flip_average": teacher_cfg.flip_average,
    }
    return teacher, summary


def measure_exported(network: nn.Module, datamodule: CIFAR10DataModule) -> dict[str, Any]:
    """The exported weights measured as quantization will see them: fp32, single view, on every test set.

    Lightning's test loop runs under the training precision (bf16); the headline number is fp32.
    The flip-averaged figure stands beside it, never instead of it. A second test set
    (``data.extra_test_root``) gets its top-1 with one standard error: it may be small.
    """
    network = copy.deepcopy(network).float().eval()
    test, batch = datamodule.splits["test"], datamodule.eval_batch_size
    measured: dict[str, Any] = {
        "test_top1_fp32": top1(network, test, normalize, batch),
        "test_top1_flip_averaged": flip_averaged_top1(network, test, normalize, batch),
    }
    extra = datamodule.splits.get("extra_test")
    if extra is not None:
        extra_top1, extra_stderr = top1_with_error(network, extra, normalize, batch)
        measured["extra_test"] = {
            "label": datamodule.extra_test_label,
            "images": len(extra),
            "top1": extra_top1,
            "stderr": extra_stderr,
        }
    return measured


def log_text(path: Path) -> str:
    """The run's log so far (Hydra's ``<job>.log`` in the run directory); empty when there is none, as in tests."""
    try:
        return path.read_text()
    except OSError:
        return ""


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test and export; return the exported file's metadata."""
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    output_dir = Path(cfg.output_dir)
    teacher, teacher_meta = load_teacher(cfg.get("teacher"))
    datamodule = instantiate(cfg.data)
    distill = {}
    if teacher is not None:
        distill = {
            "teacher": teacher,
            "distill_alpha": cfg.teacher.alpha,
            "distill_temperature": cfg.teacher.temperature,
            "teacher_flip_average": cfg.teacher.flip_average,
        }
    module = Classifier(instantiate(cfg.model), **instantiate(cfg.optim), **distill, compile=cfg.compile)
    clock = EpochLog()
    # save_top_k=1 without a monitor keeps the newest epoch; with save_top_k=0 Lightning would
    # write last.ckpt only when training ends, and a run killed earlier could not resume.
    checkpointing = ModelCheckpoint(dirpath=output_dir / "checkpoints", save_last=True, save_top_k=1)
    trainer = fit_resumably(module, datamodule, cfg.trainer, output_dir, [clock, checkpointing], cfg.resume)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not val_metrics and datamodule.val_size:  # a finished run re-run: fit trained and validated nothing
        val_metrics = {k: float(v) for k, v in (trainer.validate(module, datamodule, verbose=False) or [{}])[0].items()}
    test_metrics = trainer.test(module, datamodule, verbose=False)[0]
    choice = choose_weights({**val_metrics, **test_metrics})
    network = module.ema.module if choice == "ema" else module.model
    meta = {
        "test_top1": 100 * test_metrics["test/ema_acc" if choice == "ema" else "test/acc"],
        "val_top1": {k: 100 * v for k, v in val_metrics.items()},
        "weights": choice,
        "data": datamodule.label,
        "train_images": len(datamodule.splits["train"]),
        "val_size": datamodule.val_size,
        "split_seed": datamodule.seed,
        "teacher": teacher_meta,
        "epochs": trainer.current_epoch,
        "precision": str(trainer.precision),
        "precision_by_epoch": precision_spans(log_text(output_dir / "train.log")),
        "train_seconds": round(clock.seconds, 1),
        "command": "python -m qexp.train " + " ".join(sys.argv[1:]),
        "config": OmegaConf.to_yaml(portable_config(cfg)),
        **measure_exported(network, datamodule),
        "hardware": hardware(),
        "versions": versions(),
        "git": git_commit(),
    }
    export = Path(cfg.export_path)
    save_weights(export, network, arch=arch_name(cfg.model), meta=meta)
    log.info(
        "test top-1 %.2f %% (%s weights, fp32 %.2f %%, flip-averaged %.2f %%) -> %s",
        meta["test_top1"], choice, meta["test_top1_fp32"], meta["test_top1_flip_averaged"], portable_path(export),
    )  # fmt: skip
    if "extra_test" in meta:
        extra = meta["extra_test"]
        log.info("%s: top-1 %.2f ± %.2f %%", extra["label"], extra["top1"], extra["stderr"])
    return meta


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        train(cfg)


if __name__ == "__main__":
    main()
