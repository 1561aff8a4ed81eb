import pytest
import torch

from qexp.quant.core.fold import fold_batchnorm
from qexp.quant.custom.equalize import equalization_scales, equalize_blocks
from qexp.quant.custom.ptq import PTQConfig
from tests.test_fold import randomise_batchnorm
from tests.test_patterns import small_net
from tests.test_ptq import batches, output_errors, tiny_resnet


def test_equalization_keeps_the_function_and_balances_the_ranges():
    model = fold_batchnorm(tiny_resnet())
    block = model.layer1[0]
    with torch.no_grad():  # make the channel ranges of conv1 wildly uneven
        block.conv1.weight.mul_(torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1))
    x = batches(0)[0]
    before = model(x)
    assert equalize_blocks(model) == 3
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
    r1 = block.conv1.weight.abs().flatten(1).amax(1)
    r2 = block.conv2.weight.abs().transpose(0, 1).flatten(1).amax(1)
    torch.testing.assert_close(r1, r2)
    assert torch.equal(equalization_scales(torch.zeros(2, 1, 3, 3), torch.ones(1, 2, 3, 3)), torch.ones(2))


def test_equalization_finds_its_pair_in_a_model_that_is_not_a_resnet():
    torch.manual_seed(0)
    model = fold_batchnorm(randomise_batchnorm(small_net()))
    first, second = model[3].body[0], model[3].body[2]
    with torch.no_grad():
        first.weight.mul_(torch.logspace(-2, 1, 4).reshape(-1, 1, 1, 1))
    x = batches(0)[0]
    before = model(x)
    assert equalize_blocks(model) == 1
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
    r1 = first.weight.abs().flatten(1).amax(1)
    r2 = second.weight.abs().transpose(0, 1).flatten(1).amax(1)
    torch.testing.assert_close(r1, r2)


def test_equalization_lowers_the_error_of_per_tensor_weights():
    model = tiny_resnet()
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1))
    plain = PTQConfig(4, 16, granularity="per_tensor")
    equalized = PTQConfig(4, 16, granularity="per_tensor", equalize=True)
    only = ["layer1.0.conv1", "layer1.0.conv2"]
    [error], [error_plain] = (output_errors(model, c, ["layer1.0"], only) for c in (equalized, plain))
    assert error < 0.9 * error_plain


def test_equalization_refuses_an_unfolded_model():
    with pytest.raises(ValueError, match="fold_batchnorm"):
        equalize_blocks(tiny_resnet())
