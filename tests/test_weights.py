"""The weight file's word on which training images its model never saw, checked before anything is validated."""

from types import SimpleNamespace

import pytest

from qexp.cells.weights import check_held_out
from qexp.errors import QexpError

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


def test_loading_a_narrow_resnet20_is_refused_unless_allowed(tmp_path, caplog):
    import torch

    from qexp.cells.weights import load_weights, save_weights
    from qexp.models import resnet20

    model = resnet20()
    path = tmp_path / "w.pt"
    save_weights(path, model, "resnet20", {})
    with caplog.at_level("WARNING", logger="qexp.cells.weights"):
        load_weights(path, resnet20(), "resnet20")
    assert "dead residual" not in caplog.text
    with torch.no_grad():
        model.layer3[0].bn2.weight[:24] = 0
    save_weights(path, model, "resnet20", {})
    with pytest.raises(QexpError, match=r"24 dead residual channels .* layer3\.0 \(24\).*allow_narrow=true"):
        load_weights(path, resnet20(), "resnet20")
    with caplog.at_level("WARNING", logger="qexp.cells.weights"):
        load_weights(path, resnet20(), "resnet20", allow_narrow=True)
    assert "24 dead residual channels" in caplog.text and "layer3.0 (24)" in caplog.text


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def foreign_file(tmp_path, model, **card):
    """``model`` saved as a public ResNet20 is, with a side file.

    DataParallel's ``module.`` prefix on every key, ``linear`` for our ``fc``, ImageNet normalisation.
    """
    import json

    import torch

    state = {"module." + k.replace("fc.", "linear."): v for k, v in model.state_dict().items()}
    path = tmp_path / "resnet20-public.th"
    torch.save({"best_prec1": 91.7, "state_dict": state}, path)
    side = {"arch": "resnet20", "normalization": IMAGENET, "val_size": 0, "rename": {"linear.": "fc."}, **card}
    path.with_name(path.name + ".json").write_text(json.dumps({k: v for k, v in side.items() if v is not None}))
    return path


def test_a_foreign_state_dict_loads_through_its_side_file_with_its_normalisation(tmp_path):
    import torch

    from qexp.cells.weights import load_weights, normalization_of
    from qexp.data import IMAGENET_NORMALIZATION
    from qexp.models import resnet20

    torch.manual_seed(0)
    model = resnet20().eval()
    path = foreign_file(tmp_path, model, source="a public repository")
    loaded = resnet20().eval()
    meta = load_weights(path, loaded, "resnet20")
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert normalization_of(meta) == IMAGENET_NORMALIZATION
    assert meta["val_size"] == 0 and meta["source"] == "a public repository"
    assert meta["side_file"].endswith("resnet20-public.th.json")


def test_a_qexp_weight_file_keeps_cifar10_normalisation(tmp_path):
    from qexp.cells.weights import load_weights, normalization_of, save_weights
    from qexp.data import CIFAR10_NORMALIZATION
    from qexp.models import resnet20

    path = tmp_path / "w.pt"
    save_weights(path, resnet20(), "resnet20", {"epochs": 1})
    assert normalization_of(load_weights(path, resnet20(), "resnet20")) == CIFAR10_NORMALIZATION


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"normalization": {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}}, "has normalization="),
        ({"normalization": {"mean": [125, 120, 110], "std": [60, 60, 60]}}, r"in \[0, 1\]"),
        ({"val_size": -1}, "val_size=-1"),
        ({"val_size": None}, r"lacks \['val_size'\]"),
        ({"sha256": "0" * 64}, "describes the file with sha256 0000"),
        ({"arch": "resnet56"}, "holds arch 'resnet56'; expected 'resnet20'"),
        ({"rename": {}}, "does not fit resnet20: Missing key.*fc.weight"),  # 'linear.*' keys left as they are
    ],
)
def test_a_wrong_side_file_is_one_clear_error(tmp_path, card, message):
    from qexp.cells.weights import load_weights
    from qexp.models import resnet20

    path = foreign_file(tmp_path, resnet20(), **card)
    with pytest.raises(QexpError, match=message):
        load_weights(path, resnet20(), "resnet20")


def test_a_state_dict_without_a_side_file_names_the_file_to_write(tmp_path):
    from qexp.cells.weights import load_weights
    from qexp.models import resnet20

    path = foreign_file(tmp_path, resnet20())
    path.with_name(path.name + ".json").unlink()
    with pytest.raises(QexpError, match=r"no side file .*resnet20-public\.th\.json.*normalization"):
        load_weights(path, resnet20(), "resnet20")


def test_a_checkpoint_of_another_depth_is_one_clear_error(tmp_path):
    from qexp.cells.weights import load_weights
    from qexp.models import resnet20
    from qexp.models.resnet import ResNet

    path = foreign_file(tmp_path, ResNet(blocks_per_stage=5))  # a ResNet32's keys and shapes
    with pytest.raises(QexpError, match=r"does not fit resnet20: .*Unexpected key"):
        load_weights(path, resnet20(), "resnet20")


def test_the_side_file_is_part_of_the_cells_identity(tmp_path):
    from omegaconf import OmegaConf

    from qexp.cells.cache import cell_key, checkpoint_digest, file_digest
    from qexp.cells.weights import save_weights
    from qexp.models import resnet20

    cfg = OmegaConf.create({"quant": {"method": "none"}, "bits": 8})
    own = tmp_path / "own.pt"
    save_weights(own, resnet20(), "resnet20", {})
    assert checkpoint_digest(own) == file_digest(own)  # a qexp file's cells keep their keys
    path = foreign_file(tmp_path, resnet20())
    before = cell_key(cfg, path)
    foreign_file(tmp_path, resnet20(), normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert cell_key(cfg, path) != before
