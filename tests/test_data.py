import shutil
from pathlib import Path

import pytest
import torch

from qexp.data import (
    MEAN,
    STD,
    CIFAR10DataModule,
    cutout,
    load_image_folder,
    make_synthetic,
    normalize,
    random_crop,
    random_flip,
)
from qexp.errors import QexpError
from tests.conftest import write_image_folder


def test_image_folder_is_decoded_with_cifar_labels_and_cached(image_folder: Path):
    splits = load_image_folder(image_folder)
    train = splits["train"]
    assert train.images.shape == (60, 3, 32, 32) and train.images.dtype == torch.uint8
    # image i of class c holds the value 10c + i (PNG is lossless)
    assert torch.equal(train.images[:, 0, 0, 0].long(), 10 * train.labels + torch.arange(60) % 6)
    assert (image_folder / "train.qexp-cache.pt").is_file()
    again = load_image_folder(image_folder)["train"]
    assert torch.equal(again.images, train.images)


def test_cache_is_invalidated_when_images_change(tmp_path: Path):
    root = write_image_folder(tmp_path, per_class=1, classes=("cat", "dog"))
    assert len(load_image_folder(root)["train"]) == 2
    write_image_folder(root, per_class=2, classes=("cat", "dog"))
    assert len(load_image_folder(root)["train"]) == 4


def test_jpeg_folder_is_read(tmp_path: Path):
    root = write_image_folder(tmp_path, per_class=1, classes=("ship",), suffix=".jpg")
    split = load_image_folder(root)["test"]
    assert split.labels.tolist() == [8]


def test_missing_root_split_and_unknown_class_get_clear_errors(tmp_path: Path):
    with pytest.raises(QexpError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    root = write_image_folder(tmp_path / "no_test", 1, classes=("cat",))
    shutil.rmtree(root / "test")
    with pytest.raises(QexpError, match="has no 'test' split"):
        load_image_folder(root)
    root = write_image_folder(tmp_path / "unicorn", 1, classes=("cat",))
    (root / "train" / "unicorn").mkdir()
    with pytest.raises(QexpError, match="unicorn"):
        load_image_folder(root)


def test_random_crop_moves_content_within_padding():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[0, 0, 3, 3] = 255
    crops = random_crop(image.expand(500, 1, 8, 8), padding=2, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (500, 1, 8, 8)
    positions = {tuple(torch.nonzero(c[0])[0].tolist()) for c in crops if c.any()}
    assert positions == {(r, c) for r in range(1, 6) for c in range(1, 6)}


def test_random_flip_mirrors_about_half():
    images = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 1, 4).expand(1000, 1, 1, 4)
    flipped = random_flip(images, generator=torch.Generator().manual_seed(0))
    is_flipped = flipped[:, 0, 0, 0] == 3
    assert torch.equal(flipped[is_flipped], images[is_flipped].flip(-1))
    assert torch.equal(flipped[~is_flipped], images[~is_flipped])
    assert 400 < int(is_flipped.sum()) < 600


def test_cutout_zeroes_one_square():
    images = torch.ones(200, 3, 32, 32)
    out = cutout(images, 8, generator=torch.Generator().manual_seed(0))
    erased = (out[:, 0] == 0).sum(dim=(1, 2))
    assert erased.max() == 64 and erased.min() > 0  # clipped at the border, never absent
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)


def test_normalize_is_channels_last_and_standardised():
    mean_image = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = normalize(mean_image)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert out.abs().max() < 0.01  # the data set's mean maps to 0
    one_std_up = (mean_image.float() + torch.tensor(STD).view(1, 3, 1, 1) * 255).round().to(torch.uint8)
    torch.testing.assert_close(normalize(one_std_up), torch.ones(2, 3, 4, 4), atol=0.03, rtol=0)


def test_datamodule_splits_and_calibration_subset_come_from_training_images():
    dm = CIFAR10DataModule(source="synthetic", val_size=64, calib_size=100, synthetic_sizes=(512, 128))
    dm.setup()
    assert len(dm.splits["train"]) == 448 and len(dm.splits["val"]) == 64
    calibration = dm.calibration_split()
    full_train = make_synthetic(512, 128, seed=0)["train"]
    assert torch.equal(calibration.images, full_train.images[dm.calibration_indices])
    val_indices = set(torch.randperm(512, generator=torch.Generator().manual_seed(0))[:64].tolist())
    assert not val_indices & set(dm.calibration_indices.tolist())
    other = CIFAR10DataModule(source="synthetic", val_size=64, calib_size=100, synthetic_sizes=(512, 128))
    other.setup()
    assert torch.equal(other.calibration_indices, dm.calibration_indices)
    batches = list(dm.calibration_batches(torch.device("cpu")))
    assert sum(len(b) for b in batches) == 100


def test_another_calibration_seed_draws_other_training_images_and_keeps_the_split():
    def data(calib_seed):
        dm = CIFAR10DataModule(
            source="synthetic", val_size=64, calib_size=100, calib_seed=calib_seed, synthetic_sizes=(512, 128)
        )
        dm.setup()
        return dm

    default, seeded, again, other = data(None), data(1), data(1), data(2)
    val_indices = set(torch.randperm(512, generator=torch.Generator().manual_seed(0))[:64].tolist())
    for dm in (seeded, other):
        assert len(dm.calibration_indices) == 100 and not val_indices & set(dm.calibration_indices.tolist())
        assert torch.equal(dm.splits["val"].images, default.splits["val"].images)  # the held-out split stays
    assert torch.equal(seeded.calibration_indices, again.calibration_indices)

    def overlap(a, b):
        return len(set(a.calibration_indices.tolist()) & set(b.calibration_indices.tolist()))

    # 100 of 448 training images: two independent draws share about 100 * 100 / 448 = 22 of them.
    assert overlap(seeded, other) < 50 and overlap(seeded, default) < 50


def test_second_test_set_is_read_from_a_test_only_folder(tmp_path: Path):
    extra = write_image_folder(tmp_path / "extra", per_class=2)
    shutil.rmtree(extra / "train")  # only a test split, like the original CIFAR-10 images
    dm = CIFAR10DataModule(source="synthetic", val_size=16, calib_size=8, extra_test_root=str(extra))
    dm.setup()
    assert len(dm.splits["extra_test"]) == 20 and dm.extra_test_label == "extra"
    assert dm.splits["extra_test"].labels.tolist() == [c for c in range(10) for _ in range(2)]
    missing = CIFAR10DataModule(source="synthetic", val_size=16, calib_size=8, extra_test_root=str(tmp_path / "no"))
    with pytest.raises(QexpError, match=r"data.extra_test_root=.* is not a directory"):
        missing.setup()


def test_training_loader_yields_whole_uint8_batches():
    dm = CIFAR10DataModule(source="synthetic", batch_size=32, val_size=0, calib_size=8, synthetic_sizes=(100, 10))
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (32,)
    assert len(dm.train_dataloader()) == 3  # drop_last


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "imagenet"}, "data.source='imagenet'"),
        ({"source": "cifar10_folder", "root": None}, "needs data.root"),
    ],
)
def test_bad_datamodule_arguments(kwargs, message):
    with pytest.raises(QexpError, match=message):
        CIFAR10DataModule(**kwargs)


def test_torchvision_download_failure_explains_the_local_alternative(tmp_path: Path):
    dm = CIFAR10DataModule(source="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(QexpError, match="data=cifar10_folder"):
        dm.setup()
