"""CIFAR-10 as in-memory uint8 tensors, augmented a whole batch at a time on the model's device.

Why: for a 0.27 M-parameter network on a CPU, decoding and per-image transforms in DataLoader
workers cost more than the network itself. Each split is one ``N x 3 x 32 x 32`` uint8 tensor
(150 MB for the training set); a batch is ``images[indices]``; crop, flip, cutout and
normalisation are tensor ops on the batch after it reached the device.

Three sources give the same tensors: torchvision's CIFAR-10 (downloaded when absent), an
ImageFolder tree such as the JPEG mirror (decoded once, cached next to the images), and small
synthetic data for tests.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from qexp.atomic import write_atomically
from qexp.errors import QexpError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SOURCES = ("cifar10", "cifar10_folder", "synthetic")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Split:
    """``images``: N x 3 x 32 x 32 uint8; ``labels``: N int64 in ``0..9``."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class Normalization:
    """The per-channel mean and std, in ``[0, 1]`` pixel units, that a model's inputs are standardised with.

    It belongs to the model, not to the data: a network trained on inputs standardised with
    ImageNet's statistics (as many public CIFAR-10 ResNets are) sees shifted inputs under
    CIFAR-10's, so a foreign weight file states its own (``qexp.cells.weights``) and every path that
    feeds the model -- calibration, evaluation, the ONNX graph -- uses that one.
    """

    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def pixel_statistics(self, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """The mean and std in uint8 pixel units, ``1 x 3 x 1 x 1`` float32."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255
        return mean, std


CIFAR10_NORMALIZATION = Normalization()
IMAGENET_NORMALIZATION = Normalization(IMAGENET_MEAN, IMAGENET_STD)


# --- sources -----------------------------------------------------------------------------


def load_torchvision_cifar10(root: Path, download: bool) -> dict[str, Split]:
    """torchvision's CIFAR-10 binary batches, downloaded into ``root`` when absent."""
    from torchvision.datasets import CIFAR10

    splits = {}
    for split in SPLITS:
        try:
            dataset = CIFAR10(str(root), train=split == "train", download=download)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise QexpError(
                f"CIFAR-10 is not in data.root={str(root)!r} and could not be downloaded "
                f"({type(error).__name__}: {error}). Without internet access, unpack a copy "
                "in ImageFolder layout (root/train/<class>/*.png|jpg, root/test/...) and run "
                "with data=cifar10_folder data.root=PATH, e.g. the JPEG mirror: mkdir -p "
                "data/cifar10-jpeg && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "
                "data/cifar10-jpeg."
            ) from None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        splits[split] = Split(images, torch.tensor(dataset.targets, dtype=torch.int64))
    return splits


def _list_image_folder(split_dir: Path) -> list[tuple[Path, int]]:
    if not split_dir.is_dir():
        raise QexpError(
            f"data.root has no {split_dir.name!r} split: {str(split_dir)!r} is not a "
            f"directory. Expected root/{{train,test}}/<class>/*.png|jpg with the classes "
            f"{', '.join(CLASSES)}."
        )
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    unknown = [p.name for p in class_dirs if p.name not in CLASSES]
    if unknown or not class_dirs:
        raise QexpError(
            f"{str(split_dir)!r} has class folders {unknown or '(none)'} that are not "
            f"CIFAR-10 classes; expected a subset of: {', '.join(CLASSES)}."
        )
    files = [
        (path, CLASSES.index(class_dir.name))
        for class_dir in class_dirs
        for path in sorted(class_dir.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise QexpError(f"{str(split_dir)!r} holds no .png or .jpg images.")
    return files


def _decode(files: list[tuple[Path, int]]) -> Split:
    from PIL import Image

    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        with Image.open(path) as image:
            if image.size != (32, 32):
                raise QexpError(f"{str(path)!r} is {image.size[0]}x{image.size[1]}; expected 32x32.")
            images[i] = np.asarray(image.convert("RGB"))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)


def _fingerprint(files: list[tuple[Path, int]]) -> str:
    digest = hashlib.sha256()
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path.parent.name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{label}\n".encode())
    return digest.hexdigest()


def _read_cache(cache: Path) -> dict | None:
    """The cached tensors, or None when the cache is absent or unreadable (then it is rebuilt)."""
    try:
        return torch.load(cache, weights_only=True)
    except Exception:  # missing, truncated or foreign: decoding again is always correct
        return None


def load_image_folder(root: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, Split]:
    """An ImageFolder tree ``root/{train,test}/<class>/*`` (or just the ``splits`` asked for), decoded once and cached.

    The cache (``root/<split>.qexp-cache.pt``) holds the uint8 tensors and a fingerprint of
    the file list, so adding or replacing images invalidates it. A read-only ``root`` simply
    means decoding every time.
    """
    if not root.is_dir():
        raise QexpError(
            f"data.root={str(root)!r} does not exist or is not a directory. Expected an "
            f"ImageFolder tree root/{{train,test}}/<class>/*.png|jpg."
        )
    loaded = {}
    for split in splits:
        files = _list_image_folder(root / split)
        fingerprint = _fingerprint(files)
        cache = root / f"{split}.qexp-cache.pt"
        cached = _read_cache(cache)
        if cached is not None and cached.get("fingerprint") == fingerprint:
            loaded[split] = Split(cached["images"], cached["labels"])
            continue
        data = _decode(files)
        payload = {"images": data.images, "labels": data.labels, "fingerprint": fingerprint}
        with contextlib.suppress(OSError):  # a read-only data folder: decode again next time
            write_atomically(cache, lambda tmp, payload=payload: torch.save(payload, tmp))
        loaded[split] = data
    return loaded


def make_synthetic(num_train: int, num_test: int, seed: int) -> dict[str, Split]:
    """Random images whose colour pattern depends on the class, so a model can learn them."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(len(CLASSES), 3, 32, 32, generator=generator) * 255

    def split(n: int) -> Split:
        labels = torch.randint(0, len(CLASSES), (n,), generator=generator)
        noise = torch.randn(n, 3, 32, 32, generator=generator) * 40
        images = (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    return {"train": split(num_train), "test": split(num_test)}


# --- batch augmentation (pure functions of a uint8 or float batch) -----------------------


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` and cut a random ``H x W`` window per image. Shape kept."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    device = images.device
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    rows = (dy + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channels = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def cutout(images: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero a ``size x size`` square centred anywhere in the image (DeVries & Taylor 2017).

    Applied after normalisation, so the erased pixels take the data set's mean colour.
    """
    n, _, h, w = images.shape
    device = images.device
    cy = torch.randint(0, h, (n, 1, 1), device=device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=device, generator=generator)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images * (~inside)[:, None].to(images.dtype)


def normalize(images: Tensor, normalization: Normalization = CIFAR10_NORMALIZATION) -> Tensor:
    """uint8 ``N x 3 x H x W`` -> float32 standardised (CIFAR-10's mean and std unless told), channels_last."""
    mean, std = normalization.pixel_statistics(images.device)
    out = (images.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)


# --- loading -------------------------------------------------------------------------------


class _BatchIndexed(torch.utils.data.Dataset):
    """Indexed by a list of indices; returns the whole batch in one gather."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        return self.split.images[index], self.split.labels[index]


def batch_loader(split: Split, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
    """A DataLoader over uint8 batches with no workers and no per-item collation."""
    order = RandomSampler(range(len(split))) if shuffle else SequentialSampler(range(len(split)))
    sampler = BatchSampler(order, batch_size, drop_last)
    return DataLoader(_BatchIndexed(split), sampler=sampler, batch_size=None)


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from one of ``SOURCES``, with a held-out validation split and a calibration subset.

    The training images are split once with ``seed`` into ``train`` and ``val`` (``val_size``
    images, used to choose epochs, recipes and the exported weights). The calibration subset
    for post-training quantization is ``calib_size`` images of the training part, fixed by the
    seed and never augmented. The test split is for final evaluation only.

    ``extra_test_root`` names a second test set, an ImageFolder tree with only a ``test`` split
    (e.g. the 1 017 original CIFAR-10 test images beside the JPEG mirror): it becomes the split
    ``extra_test``, measured beside ``test`` and, like it, never used to choose anything.
    """

    def __init__(
        self,
        source: str = "cifar10",
        root: str | None = None,
        download: bool = True,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        calib_size: int = 1024,
        calib_seed: int | None = None,
        seed: int = 0,
        crop_padding: int = 4,
        flip: bool = True,
        cutout_size: int = 0,
        synthetic_sizes: tuple[int, int] = (512, 256),
        label: str = "",
        extra_test_root: str | None = None,
        extra_test_label: str = "",
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise QexpError(f"data.source={source!r} is not known; expected one of {SOURCES}.")
        if source != "synthetic" and not root:
            raise QexpError(f"data.source={source!r} needs data.root (a directory); got {root!r}.")
        self.source = source
        self.root = Path(root).expanduser().resolve() if root else None
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.calib_size = calib_size
        self.calib_seed = calib_seed
        self.seed = seed
        self.crop_padding = crop_padding
        self.flip = flip
        self.cutout_size = cutout_size
        self.synthetic_sizes = tuple(synthetic_sizes)
        self.label = label or source  # what results say they were measured on
        self.extra_test_root = Path(extra_test_root).expanduser().resolve() if extra_test_root else None
        self.extra_test_label = extra_test_label or (self.extra_test_root.name if self.extra_test_root else "")
        # The model's input standardisation; a weight file that states another sets it (qexp.cells.weights).
        self.normalization = CIFAR10_NORMALIZATION
        self.splits: dict[str, Split] = {}
        self._full_train: Split | None = None
        self.calibration_indices: Tensor | None = None

    def _load(self) -> dict[str, Split]:
        if self.source == "cifar10":
            return load_torchvision_cifar10(self.root, self.download)
        if self.source == "cifar10_folder":
            return load_image_folder(self.root)
        return make_synthetic(*self.synthetic_sizes, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        loaded = self._load()
        train = loaded["train"]
        if not 0 <= self.val_size < len(train):
            raise QexpError(
                f"data.val_size={self.val_size} must be in [0, {len(train)}) for {len(train)} training images."
            )
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
        train_indices, val_indices = order[self.val_size :], order[: self.val_size]
        if not 0 < self.calib_size <= len(train_indices):
            raise QexpError(
                f"data.calib_size={self.calib_size} must be in [1, {len(train_indices)}] "
                "(images of the training split used for calibration)."
            )
        # Calibration images are a seeded draw from the training part (never val or test);
        # the indices refer to the full training split so a test can check where they came from.
        self.calibration_indices = self.calibration_draw(train_indices)
        self.splits = {"train": train.subset(train_indices), "test": loaded["test"]}
        if self.val_size:
            self.splits["val"] = train.subset(val_indices)
        if self.extra_test_root is not None:
            if not self.extra_test_root.is_dir():
                raise QexpError(
                    f"data.extra_test_root={str(self.extra_test_root)!r} is not a directory; expected an "
                    "ImageFolder tree with a test/<class>/*.png|jpg split, or null for no second test set."
                )
            self.splits["extra_test"] = load_image_folder(self.extra_test_root, splits=("test",))["test"]
        self._full_train = train

    def calibration_draw(self, train_indices: Tensor) -> Tensor:
        """The calibration subset of ``train_indices``: its first ``calib_size`` (the split's own seeded
        order), or with ``calib_seed`` another seeded draw, so that a result's spread over calibration
        sets can be measured without touching which images are held out."""
        if self.calib_seed is None:
            chosen = train_indices[: self.calib_size]
        else:
            order = torch.randperm(len(train_indices), generator=torch.Generator().manual_seed(self.calib_seed))
            chosen = train_indices[order[: self.calib_size]]
        return chosen.sort().values

    # Lightning hooks ---------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.splits["train"], self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.splits:
            return []
        return batch_loader(self.splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.splits["test"], self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.transform(images, train=training), labels

    # batch transforms ---------------------------------------------------------------------

    def transform(self, images: Tensor, train: bool) -> Tensor:
        """uint8 batch on any device -> normalised float batch; augmented when ``train``."""
        if train and self.crop_padding:
            images = random_crop(images, self.crop_padding)
        if train and self.flip:
            images = random_flip(images)
        out = self.normalize(images)
        if train and self.cutout_size:
            out = cutout(out, self.cutout_size)
        return out

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 batch -> the float batch the model expects: standardised with ``self.normalization``."""
        return normalize(images, self.normalization)

    def augmented_batches(self, count: int, device: torch.device) -> Iterator[Tensor]:
        """``count`` random augmented training batches, e.g. to re-estimate BatchNorm statistics."""
        train = self.splits["train"]
        for _ in range(count):
            index = torch.randint(0, len(train), (self.batch_size,))
            yield self.transform(train.images[index].to(device), train=True)

    # post-training quantization ------------------------------------------------------------

    def calibration_split(self) -> Split:
        """The fixed calibration subset of the training split (un-augmented uint8 images)."""
        return self._full_train.subset(self.calibration_indices)

    def calibration_batches(self, device: torch.device) -> Iterator[Tensor]:
        """Normalised calibration batches of ``eval_batch_size`` or fewer images."""
        images = self.calibration_split().images
        for start in range(0, len(images), self.eval_batch_size):
            yield self.transform(images[start : start + self.eval_batch_size].to(device), train=False)
