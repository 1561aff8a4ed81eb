import torch
from torch import nn

from qexp.models import count_parameters, resnet20
from qexp.models.resnet import Add, PadShortcut


def test_resnet20_shapes_and_size():
    model = resnet20()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert 269_000 < count_parameters(model) < 271_000  # He et al.: 0.27 M
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_every_add_and_relu_is_a_module():
    model = resnet20()
    assert sum(isinstance(m, Add) for m in model.modules()) == 9
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 19


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = PadShortcut(extra_channels=2)(x)
    assert out.shape == (1, 4, 2, 2)
    assert torch.equal(out[:, 1:3], x[:, :, ::2, ::2])
    assert not out[:, 0].any() and not out[:, 3].any()
