import copy

import pytest
import torch
from torch import nn
from tqdm.auto import tqdm

from qexp.errors import QexpError
from qexp.models.resnet import Add, BasicBlock
from qexp.quant.core.affine import fake_quantize
from qexp.quant.core.capture import keep_input, keep_output, record
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.core.lsq import LearnedStepQuantizer
from qexp.quant.core.modules import FakeQuantize, QuantAdd, QuantLayer, shared_grids
from qexp.quant.custom import reconstruct as reconstruction
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.custom.qdrop import QDrop
from qexp.quant.custom.reconstruct import (
    ReconstructionConfig,
    calibration_split,
    input_grid,
    output_error,
    output_grids,
    reconstruct,
    units,
)
from tests.test_ptq import batches, output_errors, tiny_resnet


def test_units_are_blocks_plus_the_layers_outside_them():
    quantized, _ = quantize_model(tiny_resnet(), PTQConfig(8, 8), batches(1))
    reference = fold_batchnorm(tiny_resnet())
    assert units(quantized, reference, "block") == ["conv1", "layer1.0", "layer2.0", "layer3.0", "fc"]
    assert len(units(quantized, reference, "layer")) == 8
    assert all(isinstance(quantized.get_submodule(n), BasicBlock) for n in units(quantized, reference, "block")[1:-1])


def test_a_block_holding_one_quantized_layer_is_a_unit_though_its_add_stays_float():
    only = ["layer2.0.conv1", "fc"]
    quantized, _ = quantize_model(tiny_resnet(), PTQConfig(8, 8), batches(1), only=only)
    assert not isinstance(quantized.layer2[0].add, QuantAdd)
    assert units(quantized, fold_batchnorm(tiny_resnet()), "block") == ["layer2.0", "fc"]
    assert units(quantized, fold_batchnorm(tiny_resnet()), "layer") == only


def test_a_one_layer_probe_with_block_units_is_fitted_to_its_block_output():
    """A sensitivity probe with reconstruct=block runs BRECQ's objective, not AdaRound's on the layer alone."""
    model, calibration = tiny_resnet(), batches(1)
    probe, _ = quantize_model(model, PTQConfig(2, 16, observer="mse"), calibration, only=["layer1.0.conv1"])
    reference = fold_batchnorm(model)
    got, want = (record(m, ["layer1.0"], calibration, keep_output)["layer1.0"] for m in (probe, reference))
    config = ReconstructionConfig("block", steps=300, drop=0, scale_lr=0, held_out=0)
    errors = reconstruct(probe, reference, calibration, config)
    assert list(errors) == ["layer1.0"]
    assert errors["layer1.0"][0] == pytest.approx(float(output_error(got, want)), rel=1e-5)  # the block's output
    assert errors["layer1.0"][1] < 0.95 * errors["layer1.0"][0]


@pytest.mark.parametrize(
    ("granularity", "name", "shared"),
    [
        ("layer", "layer2.0.conv2", False),
        ("block", "layer2.0", False),
        # shared grids with every recovery option are covered quickly in test_ptq.py
        pytest.param("block", "layer2.0", True, marks=pytest.mark.slow),
    ],
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
    quantizer = rtn.layer1[0].conv2.input_quantizer
    stand_in = QDrop(LearnedStepQuantizer(quantizer, True, gradient_scale=False), 0.9, torch.Generator()).eval()
    x = torch.rand(4, 16, 8, 8)
    expected = fake_quantize(x, before, quantizer.zero_point, quantizer.qmin, quantizer.qmax)
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


def frozen(model: nn.Module, seed: int = 1, **options: object) -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    """A round-to-nearest W2A4 tiny ResNet, its folded float reference and its calibration batches."""
    quantized, _ = quantize_model(model, PTQConfig(2, 4, observer="mse", **options), batches(seed))
    return quantized, fold_batchnorm(model), batches(seed)


def test_errors_are_measured_on_held_out_images_the_fit_never_sees(monkeypatch):
    quantized, reference, calibration = frozen(tiny_resnet())
    calibration[-1][-8:] *= 10  # the 8 held-out images (1/8 of 64) are unlike the 56 fitted ones
    fitted_on = []
    fit = reconstruction._fit
    monkeypatch.setattr(
        reconstruction, "_fit", lambda unit, inputs, *args: fitted_on.append(inputs) or fit(unit, inputs, *args)
    )
    config = ReconstructionConfig("layer", steps=50, held_out=0.125)
    errors = reconstruct(quantized, reference, calibration, config)
    images = torch.cat(calibration)
    assert len(fitted_on) == 8 and all(len(inputs) == 56 for inputs in fitted_on)
    assert torch.equal(fitted_on[0], images[:56])  # the stem's input: the first 56 images themselves
    got, want = (record(m, ["fc"], calibration, keep_output)["fc"] for m in (quantized, reference))
    held_out, in_sample = (float(output_error(got[part], want[part])) for part in (slice(56, None), slice(0, 56)))
    assert errors["fc"][1] == pytest.approx(held_out, rel=1e-5)  # the last unit's error after: on the held-out 8
    assert held_out > 2 * in_sample  # ... which differ from the fitted images, so the in-sample error hides it


def test_held_out_zero_measures_in_sample_and_too_few_images_are_refused():
    assert calibration_split(64, 0.0) == (slice(None), slice(None))
    assert calibration_split(64, 0.125) == (slice(0, 56), slice(56, None))
    with pytest.raises(QexpError, match=r"held_out=0.125 of 2 calibration images holds out 0"):
        calibration_split(2, 0.125)
    with pytest.raises(ValueError, match=r"quant.reconstruction.held_out=1.0"):
        ReconstructionConfig(held_out=1.0)


@pytest.mark.parametrize("where", ["stem", "block"])
def test_a_reconstruction_that_raises_leaves_the_model_as_it_was(monkeypatch, where):
    quantized, reference, calibration = frozen(tiny_resnet(), shared_activations=True)
    before = copy.deepcopy(quantized.state_dict())
    modules = dict(quantized.named_modules())
    modes = {name: m.training for name, m in modules.items()}
    grads = {name: p.requires_grad for name, p in quantized.named_parameters()}
    calls = []

    def failing(output, target):
        calls.append(1)
        if len(calls) == 10:  # the error before, then eight steps: the stand-ins are in and have learned
            raise RuntimeError("out of memory")
        return output_error(output, target)

    monkeypatch.setattr(reconstruction, "output_error", failing)
    config = ReconstructionConfig("block", steps=20, scale_lr=1e-2)
    with pytest.raises(RuntimeError, match="out of memory"):
        if where == "stem":  # the first unit, through the whole pass
            reconstruct(quantized, reference, calibration, config)
        else:  # a block that learns its shared input grid: stand-ins for weights, activations and the grid
            block, grid = quantized.layer1[0], quantized.relu.output_quantizer
            with reconstruction.passing_through([grid]):
                inputs = record(quantized, ["layer1.0"], calibration, keep_input)["layer1.0"]
            float_inputs, targets = (
                record(reference, ["layer1.0"], calibration, keep)["layer1.0"] for keep in (keep_input, keep_output)
            )
            reconstruction.reconstruct_unit(block, inputs, float_inputs, targets, config, tqdm(disable=True), grid)
    assert dict(quantized.named_modules()) == modules  # every original quantizer back, no stand-in left
    assert all(isinstance(m.weight_quantizer, FakeQuantize) for m in modules.values() if isinstance(m, QuantLayer))
    assert same_state(quantized.state_dict(), before)  # weights, scales and modes as they were
    assert {name: m.training for name, m in quantized.named_modules()} == modes
    assert {name: p.requires_grad for name, p in quantized.named_parameters()} == grads


def same_state(a: dict, b: dict) -> bool:
    """Equal ``state_dict``s: the same tensors bit for bit and the same extra state (a quantizer's mode)."""
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_reconstruction_repeats_and_leaves_the_callers_random_state_alone():
    model = tiny_resnet()
    config = PTQConfig(2, 4, reconstruction=ReconstructionConfig("block", steps=20, drop=0.5))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, _ = quantize_model(model, config, batches(1))
    assert torch.equal(torch.get_rng_state(), state)
    second, _ = quantize_model(model, config, batches(1))
    assert same_state(first.state_dict(), second.state_dict())
