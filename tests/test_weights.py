"""The weight file's word on which training images its model never saw, checked before anything is validated."""

from types import SimpleNamespace

import pytest

from qexp.errors import QexpError
from qexp.weights import check_held_out

LEGACY = {"config": "data:\n  source: cifar10_folder\n  val_size: 5000\n  seed: 0\n"}  # the shipped reference run


@pytest.mark.parametrize(
    ("meta", "source", "val_size", "seed", "message"),
    [
        ({}, "synthetic", 64, 0, None),  # a file from elsewhere says nothing: taken at its word
        ({"val_size": 64, "split_seed": 0}, "synthetic", 64, 0, None),
        ({"val_size": 0, "split_seed": 3}, "synthetic", 0, 0, None),  # nothing held out, nothing validated
        ({"val_size": 5000, "split_seed": 0}, "synthetic", 64, 0, "trained with data.val_size=5000 data.seed=0 held"),
        ({"val_size": 64, "split_seed": 1}, "synthetic", 64, 0, "Run with data.val_size=64 data.seed=1"),
        ({"val_size": 0, "split_seed": 0}, "synthetic", 64, 0, "trained with data.val_size=0 held out"),
        (LEGACY, "cifar10_folder", 5000, 0, None),  # older files: their training config says the split
        (LEGACY, "cifar10_folder", 5000, 1, "Run with data.val_size=5000 data.seed=0"),
        (LEGACY, "cifar10_folder", 0, 0, None),  # nothing validated: nothing to protect
        (LEGACY, "synthetic", 64, 3, None),  # other images than the training ones: no split to protect
        (LEGACY, "cifar10", 5000, 0, "cannot be rebuilt from data.source='cifar10'"),  # same images, other order
    ],
)
def test_the_validation_split_must_be_the_one_the_checkpoint_was_trained_without(meta, source, val_size, seed, message):
    data = SimpleNamespace(source=source, val_size=val_size, seed=seed)
    if message is None:
        check_held_out(meta, data)
    else:
        with pytest.raises(QexpError, match=message):
            check_held_out(meta, data)


def test_loading_a_narrow_resnet20_warns(tmp_path, caplog):
    import torch

    from qexp.models import resnet20
    from qexp.weights import load_weights, save_weights

    model = resnet20()
    path = tmp_path / "w.pt"
    save_weights(path, model, "resnet20", {})
    with caplog.at_level("WARNING", logger="qexp.weights"):
        load_weights(path, resnet20(), "resnet20")
    assert "dead residual" not in caplog.text
    with torch.no_grad():
        model.layer3[0].bn2.weight[:24] = 0
    save_weights(path, model, "resnet20", {})
    with caplog.at_level("WARNING", logger="qexp.weights"):
        load_weights(path, resnet20(), "resnet20")
    assert "24 dead residual channels" in caplog.text and "layer3.0 (24)" in caplog.text
