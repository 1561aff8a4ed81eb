import copy
import io

import pytest
import torch
from torch import nn

from qexp.errors import QexpError
from qexp.models.resnet import ResNet
from qexp.quant.core.affine import along
from qexp.quant.core.capture import keep_output, record
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.core.modules import Mode, QuantLayer, QuantOutput, layer_bits, quantizers, shared_grids
from qexp.quant.custom.ptq import PTQConfig, calibrate, choose_layer_bits, insert_quantizers, quantize_model
from qexp.quant.custom.reconstruct import ReconstructionConfig
from qexp.quant.export.packed import exported_weight, integer_export
from tests.test_fold import randomise_batchnorm


def tiny_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(ResNet(blocks_per_stage=1, widths=(8, 16, 16)), seed)


def batches(seed: int, count: int = 2, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 16, 16, generator=generator) for _ in range(count)]


@torch.no_grad()
def output_errors(model: nn.Module, config: PTQConfig, names: list[str], only: list[str] | None = None) -> list[float]:
    """Mean squared error of each named module's output (the logits for "") vs the float model, on unseen images."""
    quantized, _ = quantize_model(model, config, batches(1), only)
    reference = fold_batchnorm(model)
    test = batches(2)
    got, want = (record(m, names, test, keep_output) for m in (quantized, reference))
    return [float((got[name] - want[name]).pow(2).mean()) for name in names]


def relative_error(model: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - reference).pow(2).mean() / reference.pow(2).mean())


def test_error_falls_as_bits_rise_and_16_bits_is_nearly_exact(model_and_data):
    model, calibration, test = model_and_data
    reference = model(test).detach()
    errors = {
        bits: relative_error(quantize_model(model, PTQConfig(bits, bits), calibration)[0], reference, test)
        for bits in (2, 4, 8, 16)
    }
    assert errors[16] < 1e-6 < errors[8] < errors[4] < errors[2]


def test_every_layer_and_add_is_quantized_and_calibrated(model_and_data):
    model, calibration, _ = model_and_data
    quantized, images = quantize_model(model, PTQConfig(4, 4, "mse", shared_activations=False), calibration)
    assert images == 64
    layers = [m for m in quantized.modules() if isinstance(m, QuantLayer)]
    assert len(layers) == 20 and not any(
        type(m) in (nn.Conv2d, nn.Linear) and m not in [layer.layer for layer in layers] for m in quantized.modules()
    )
    all_quantizers = quantizers(quantized)
    assert len(all_quantizers) == 20 * 2 + 9 * 2
    assert all(q.mode is Mode.QUANTIZE and q.observer.calibrated for q in all_quantizers.values())


def test_first_last_bits_only_changes_the_edge_layers(model_and_data):
    model, calibration, _ = model_and_data
    quantized, _ = quantize_model(model, PTQConfig(2, 4, first_last_bits=8), calibration)
    assert quantized.conv1.weight_quantizer.bits == 8 and quantized.fc.input_quantizer.bits == 8
    assert quantized.layer1[0].conv1.weight_quantizer.bits == 2
    assert quantized.layer1[0].conv1.input_quantizer.bits == 4


@pytest.mark.parametrize(
    "options",
    [
        {"observer": "percentile", "equalize": True, "bias_correction": True},
        {"observer": "mse", "average_bits": 3.0},
        {"first_last_bits": 8},
        {"reconstruction": ReconstructionConfig("layer", steps=20)},
        {"reconstruction": ReconstructionConfig("block", steps=20)},
    ],
    ids=["equalized-bias-corrected", "mixed", "first-last-8", "reconstructed-layer", "reconstructed-block"],
)
def test_shared_activations_keep_one_frozen_grid_per_tensor_with_every_recovery_option(options):
    model = tiny_resnet()
    per_reader, _ = quantize_model(model, PTQConfig(2, 4, shared_activations=False, **options), batches(1))
    shared, _ = quantize_model(model, PTQConfig(2, 4, shared_activations=True, **options), batches(1))
    producers = {name: m.output_quantizer for name, m in shared.named_modules() if isinstance(m, QuantOutput)}
    assert list(producers) == ["relu", "layer1.0.relu2", "layer2.0.relu2"]
    assert len(quantizers(shared, "activation")) == len(quantizers(per_reader, "activation")) - 3 == 11
    grids = shared_grids(shared)
    assert [grid.producer for grid in grids] == [name for name in producers for _ in range(2)]
    assert all(grid.quantizer is producers[grid.producer] for grid in grids)
    assert all(q.mode is Mode.QUANTIZE and q.observer.calibrated for q in quantizers(shared).values())
    assert layer_bits(shared) == layer_bits(per_reader)


def test_shared_activations_need_two_quantized_readers():
    config = PTQConfig(4, 4, shared_activations=True)
    quantized, _ = quantize_model(tiny_resnet(), config, batches(1), only=["layer1.0.conv1", "layer2.0.conv1"])
    assert not any(isinstance(m, QuantOutput) for m in quantized.modules())  # the adds, the other readers, stay float
    assert len(quantizers(quantized, "activation")) == 2


def test_calibration_refuses_an_empty_set(model_and_data):
    model, _, _ = model_and_data
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate(insert_quantizers(copy.deepcopy(model), PTQConfig(8, 8)), [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"w_bits": 1, "a_bits": 8}, "quant.w_bits=1"),
        ({"w_bits": 8, "a_bits": 8, "observer": "kl"}, "observer='kl'"),
        ({"w_bits": 8, "a_bits": 8, "granularity": "per_group"}, "per_group"),
    ],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(QexpError, match=message):  # QexpError: the user's to fix, reported without a traceback
        PTQConfig(**kwargs)


def test_recovery_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match=r"cannot be combined"):
        PTQConfig(4, 4, average_bits=3.0, first_last_bits=8)
    with pytest.raises(ValueError, match=r"\['layer9.conv1'\] are not layers"):
        quantize_model(tiny_resnet(), PTQConfig(4, 4), batches(1), only=["layer9.conv1"])


def test_weight_bits_set_layers_apart_from_w_bits():
    model = fold_batchnorm(tiny_resnet())
    quantized = insert_quantizers(model, PTQConfig(4, 8), weight_bits={"layer1.0.conv2": 2})
    assert quantized.layer1[0].conv2.weight_quantizer.bits == 2 and quantized.layer1[0].conv1.weight_quantizer.bits == 4


def test_mixed_precision_probes_leave_the_folded_model_as_it_was():
    model = tiny_resnet()
    reference = fold_batchnorm(model)
    before = copy.deepcopy(reference.state_dict())
    widths = choose_layer_bits(model, reference, PTQConfig(2, 16, average_bits=3.0, mixed_widths=(4, 2)), batches(1))
    assert set(widths) == {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert not any(isinstance(m, QuantLayer) for m in reference.modules())
    after = reference.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(
    "config",
    [
        PTQConfig(4, 4),
        PTQConfig(2, 4, "mse", granularity="per_tensor"),
        PTQConfig(2, 8, "percentile", equalize=True, bias_correction=True),
        PTQConfig(2, 4, "mse", reconstruction=ReconstructionConfig("block", steps=20)),
        PTQConfig(2, 8, "percentile", equalize=True, bias_correction=True, shared_activations=True),
        PTQConfig(2, 4, "mse", reconstruction=ReconstructionConfig("block", steps=20), shared_activations=True),
    ],
    ids=[
        "minmax",
        "mse-per-tensor",
        "percentile-equalized-bias-corrected",
        "mse-reconstructed",
        "shared-equalized-bias-corrected",
        "shared-reconstructed",
    ],
)
def test_a_frozen_model_loads_into_a_freshly_built_one(config):
    model = tiny_resnet()
    quantized, _ = quantize_model(model, config, batches(1))
    saved = io.BytesIO()
    torch.save(quantized.state_dict(), saved)
    saved.seek(0)
    fresh = insert_quantizers(fold_batchnorm(model), config)
    x = batches(2)[0]
    with torch.no_grad():
        assert not torch.equal(fresh(x), quantized(x))
        fresh.load_state_dict(torch.load(saved, weights_only=True))
        assert torch.equal(fresh(x), quantized(x))
    assert all(q.mode is Mode.QUANTIZE and q.observer.calibrated for q in quantizers(fresh).values())
    assert all(grid.quantizer is fresh.get_submodule(grid.producer).output_quantizer for grid in shared_grids(fresh))
    assert sum(key.endswith(".scale") for key in quantized.state_dict()) == len(quantizers(quantized))  # each once


def test_a_full_range_weight_grid_has_four_levels_at_two_bits_and_lowers_the_weight_error(model_and_data):
    model, calibration, _ = model_and_data
    models = {grid: quantize_model(model, PTQConfig(2, 8, "mse", weight_grid=grid), calibration)[0]
              for grid in ("narrow", "full")}  # fmt: skip
    layers = {grid: [m for m in quantized.modules() if isinstance(m, QuantLayer)] for grid, quantized in models.items()}
    for narrow, full in zip(layers["narrow"], layers["full"], strict=True):
        weight = full.layer.weight
        assert (full.weight_quantizer.qmin, full.weight_quantizer.qmax) == (-2, 1)
        # the ternary levels plus one: on these weights (no channel with |min| > max by much) a smaller error
        assert (full.quantized_weight() - weight).pow(2).sum() <= (narrow.quantized_weight() - weight).pow(2).sum()
    layer = layers["full"][5]
    codes = torch.round(layer.quantized_weight() / along(layer.weight_quantizer.scale, layer.layer.weight, 0))
    assert set(codes.unique().tolist()) == {-2.0, -1.0, 0.0, 1.0}
    exported = exported_weight(integer_export(models["full"]), 5)  # packed in two bits, back as the same codes
    assert torch.equal(exported.flatten().to(torch.int32), codes.flatten().to(torch.int32))
