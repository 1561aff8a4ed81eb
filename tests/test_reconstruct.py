import pytest
import torch

from qexp.errors import QexpError
from qexp.models.resnet import BasicBlock
from qexp.quant.core.affine import fake_quantize
from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.custom.ptq import PTQConfig, quantize_model
from qexp.quant.custom.reconstruct import (
    LearnedStepActivation,
    ReconstructionConfig,
    annealed_beta,
    initial_logits,
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


@pytest.mark.parametrize(("granularity", "name"), [("layer", "layer2.0.conv2"), ("block", "layer2.0")])
def test_learned_rounding_beats_round_to_nearest(granularity, name):
    model = tiny_resnet()
    rtn = PTQConfig(2, 8, observer="mse")
    learned = PTQConfig(2, 8, observer="mse", reconstruction=ReconstructionConfig(granularity, steps=300))
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
