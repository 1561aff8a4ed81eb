import torch
from torch import nn

from qexp.models import count_parameters, dead_residual_channels, resnet20
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


def test_every_channel_of_a_fresh_resnet20_learns():
    """A few SGD steps on random data reach every BatchNorm channel and every conv filter.

    With a zero-initialised ``bn2`` behind option A's zero-padded shortcut, 192 BatchNorm channels
    (the padded ones of stages 2 and 3) never received a gradient and stayed dead.
    """
    torch.manual_seed(0)
    model = resnet20()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reached = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    for _ in range(3):
        images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        for name, p in model.named_parameters():
            reached[name] |= p.grad != 0
        optimizer.step()
    for name, mask in reached.items():
        per_channel = mask.flatten(1).any(1) if mask.ndim > 1 else mask
        assert per_channel.all(), f"{name}: {int((~per_channel).sum())} channels never got a gradient"


def test_dead_residual_channels_finds_zeroed_bn2_scales():
    model = resnet20()
    assert dead_residual_channels(model) == {}
    with torch.no_grad():
        model.layer2[0].bn2.weight[:8] = 0
        model.layer3[1].bn2.weight[5] = 0
    assert dead_residual_channels(model) == {"layer2.0": list(range(8)), "layer3.1": [5]}
