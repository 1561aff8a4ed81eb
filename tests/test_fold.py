import torch
from torch import nn

from qexp.models import resnet20
from qexp.quant.core.fold import fold_batchnorm


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


def test_folded_resnet20_gives_the_same_logits():
    model = randomise_batchnorm(resnet20())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_batchnorm_without_affine_parameters_folds_too():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)).eval()
    model[1].running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    model[1].running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 2.0]))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fold_batchnorm(model)(x), model(x), atol=1e-5, rtol=1e-5)
