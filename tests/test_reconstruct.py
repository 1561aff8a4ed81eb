import pytest
import torch
from torch import nn

from qexp.errors import QexpError
from qexp.models.resnet import Add, BasicBlock
from qexp.quant.core.affine import fake_quantize
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.core.modules import shared_grids
from qexp.quant.custom import reconstruct as reconstruction
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.custom.reconstruct import (
    LearnedStepActivation,
    ReconstructionConfig,
    annealed_beta,
    initial_logits,
    input_grid,
    output_grids,
    rectified_sigmoid,
    rounding_regularizer,
    units,
)
from tests.test_ptq import batches, output_errors, tiny_resnet


def test_adaround_helpers():
    remainder = torch.tensor([0.0, 0.25, 0.5, 0.9])
    torch.testing.assert_close(rectified_sigmoid(initial_logits(remainder)), remainder)
    h = torch.tensor([0.0, 1.0, 0.5])
    assert float(rounding_regularizer(h, 2.0)) == pytest.approx(1.0)
    assert annealed_beta(10, 100, 0.2) is None
    assert annealed_beta(20, 100, 0.2) == 20.0 and annealed_beta(100, 100, 0.2) == pytest.approx(2.0)


def test_units_are_blocks_plus_the_layers_outside_them():
    quantized, _ = quantize_model(tiny_resnet(), PTQConfig(8, 8), batches(1))
    reference = fold_batchnorm(tiny_resnet())
    assert units(quantized, reference, "block") == ["conv1", "layer1.0", "layer2.0", "layer3.0", "fc"]
    assert len(units(quantized, reference, "layer")) == 8
    assert all(isinstance(quantized.get_submodule(n), BasicBlock) for n in units(quantized, reference, "block")[1:-1])


def test_with_only_some_layers_quantized_the_adds_stay_float_and_layers_are_units():
    quantized, _ = quantize_model(tiny_resnet(), PTQConfig(8, 8), batches(1), only=["layer2.0.conv1", "fc"])
    assert units(quantized, fold_batchnorm(tiny_resnet()), "block") == ["layer2.0.conv1", "fc"]


@pytest.mark.parametrize(
    ("granularity", "name", "shared"),
    [("layer", "layer2.0.conv2", False), ("block", "layer2.0", False), ("block", "layer2.0", True)],
)
def test_learned_rounding_beats_round_to_nearest(granularity, name, shared):
    model = tiny_resnet()
    rtn = PTQConfig(2, 8, observer="mse", shared_activations=shared)
    reconstruction = ReconstructionConfig(granularity, steps=300)
    learned = PTQConfig(2, 8, observer="mse", reconstruction=reconstruction, shared_activations=shared)
    errors, errors_rtn = (output_errors(model, c, [name, ""]) for c in (learned, rtn))
    assert errors[0] < 0.85 * errors_rtn[0]  # the unit it reconstructs
    if granularity == "block":  # a block's error is what reaches the logits
        assert errors[1] < errors_rtn[1]


def test_learned_rounding_keeps_weights_on_the_grid():
    config = PTQConfig(2, 4, reconstruction=ReconstructionConfig("block", steps=20))
    quantized, _ = quantize_model(tiny_resnet(), config, batches(1))
    layer = quantized.layer1[0].conv2
    q = layer.layer.weight / layer.weight_quantizer.scale.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(q, q.round(), atol=1e-4, rtol=0)
    assert set(q.round().unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_bad_reconstruction_settings_are_rejected():
    with pytest.raises(QexpError, match=r"quant.reconstruct='net'"):
        ReconstructionConfig("net")
    with pytest.raises(ValueError, match=r"quant.reconstruction.drop=1.0"):
        ReconstructionConfig(drop=1.0)
    with pytest.raises(ValueError, match=r"quant.reconstruction.steps=0"):
        ReconstructionConfig(steps=0)


def test_learned_step_sizes_are_written_back_and_qdrop_only_acts_while_fitting():
    model = tiny_resnet()
    rtn, _ = quantize_model(model, PTQConfig(4, 4), batches(1))
    config = PTQConfig(4, 4, reconstruction=ReconstructionConfig("block", steps=30, scale_lr=1e-2))
    learned, _ = quantize_model(model, config, batches(1))
    before, after = (m.layer1[0].conv2.input_quantizer.scale for m in (rtn, learned))
    assert not torch.allclose(before, after)
    stand_in = LearnedStepActivation(rtn.layer1[0].conv2.input_quantizer, drop=0.9).eval()
    x = torch.rand(4, 16, 8, 8)
    expected = fake_quantize(x, before, stand_in.zero_point, stand_in.qmin, stand_in.qmax)
    assert torch.equal(stand_in(x), expected)
    assert not torch.equal(stand_in.train()(x), expected)


def owners(monkeypatch: pytest.MonkeyPatch, model: nn.Module, config: PTQConfig) -> tuple[nn.Module, dict]:
    """The quantized model, and for each unit the shared quantizer it was given to learn (None: none)."""
    given = {}
    fit = reconstruction.reconstruct_unit

    def recording(unit, *args):
        given[unit] = args[-1]
        return fit(unit, *args)

    monkeypatch.setattr(reconstruction, "reconstruct_unit", recording)
    quantized, _ = quantize_model(model, config, batches(1))
    return quantized, {name: given[m] for name, m in quantized.named_modules() if m in given}


@pytest.mark.parametrize("unit", ["layer", "block"])
def test_a_shared_step_size_is_learned_by_the_unit_that_reads_it_and_used_by_every_reader(monkeypatch, unit):
    model = tiny_resnet()
    before, _ = quantize_model(model, PTQConfig(4, 4, shared_activations=True), batches(1))
    config = ReconstructionConfig(unit, steps=30, scale_lr=1e-2)
    quantized, given = owners(monkeypatch, model, PTQConfig(4, 4, shared_activations=True, reconstruction=config))
    grids = {
        name: quantized.get_submodule(name).output_quantizer for name in ("relu", "layer1.0.relu2", "layer2.0.relu2")
    }
    readers = (
        ["layer1.0", "layer2.0", "layer3.0"]
        if unit == "block"
        else ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
    )
    assert {name: grid for name, grid in given.items() if grid is not None} == dict(
        zip(readers, grids.values(), strict=True)
    )
    for name, grid in grids.items():
        assert not torch.equal(grid.scale, before.get_submodule(name).output_quantizer.scale)  # learned
    assert all(
        grid.quantizer is grids[grid.producer] for grid in shared_grids(quantized)
    )  # the conv1 and the add read it
    if unit == "block":  # a block hands its output grid on: the next block learns it
        assert input_grid(quantized.layer2[0]) is grids["layer1.0.relu2"]
        assert (
            output_grids(quantized.layer1[0]) == [grids["layer1.0.relu2"]] and output_grids(quantized.layer3[0]) == []
        )


class Fork(nn.Module):
    """Two convolutions read one ReLU's output: in layer units the first learns its grid, the second reads it frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.add, self.pool, self.flatten, self.fc = Add(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.stem(x))
        return self.fc(self.flatten(self.pool(self.add(self.a(y), self.b(y)))))


def test_a_shared_step_size_read_by_two_units_is_learned_by_the_first(monkeypatch):
    torch.manual_seed(0)
    config = PTQConfig(4, 4, shared_activations=True, reconstruction=ReconstructionConfig("layer", steps=10))
    quantized, given = owners(monkeypatch, Fork(), config)
    assert given == {"stem": None, "a": quantized.relu.output_quantizer, "b": None, "fc": None}
    assert quantized.a.input_quantizer.quantizer is quantized.b.input_quantizer.quantizer is given["a"]
