import torch
from torch import nn

from qexp.models import resnet20
from qexp.models.resnet import Add
from qexp.quant.core.patterns import ResidualBlock, SharedTensor, find_patterns


class Residual(nn.Module):
    """Not a ResNet block: the shortcut is the add's first operand and the branch ends without a BN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, self.body(x))


def small_net() -> nn.Module:
    """A conv -> BN stem, one residual module, a classifier: no BasicBlock anywhere."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        Residual(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_resnet20_has_19_conv_bn_pairs_9_blocks_and_9_adds():
    patterns = find_patterns(resnet20())
    names = [f"layer{stage}.{index}" for stage in (1, 2, 3) for index in range(3)]
    assert len(patterns.conv_bn) == 19 and patterns.conv_bn[0] == ("conv1", "bn1")
    assert [block.module for block in patterns.blocks] == names
    assert patterns.adds == tuple(f"{name}.add" for name in names)
    assert patterns.blocks[3] == ResidualBlock(
        module="layer2.0",
        branch=("layer2.0.conv1", "layer2.0.bn1", "layer2.0.relu1", "layer2.0.conv2", "layer2.0.bn2"),
        add="layer2.0.add",
    )


def test_resnet20_shares_the_stem_output_and_every_block_output_but_the_last():
    shared = find_patterns(resnet20()).shared
    blocks = [f"layer{stage}.{index}" for stage in (1, 2, 3) for index in range(3)]
    producers = ["relu", *(f"{block}.relu2" for block in blocks[:-1])]  # layer3.2's output is only pooled
    assert [tensor.producer for tensor in shared] == producers
    # The option-A shortcut of layer2.0 reads its input through slicing and zero padding.
    assert shared[3] == SharedTensor("layer1.2.relu2", (("layer2.0.conv1", 0), ("layer2.0.add", 1)))


def test_every_conv_of_resnet20_is_paired_with_its_batchnorm():
    pairs = find_patterns(resnet20()).conv_bn
    assert len(pairs) == 19
    assert ("layer2.0.conv1", "layer2.0.bn1") in pairs


def test_a_conv_whose_output_is_also_used_elsewhere_is_not_folded():
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert find_patterns(Branching()).conv_bn == ()


def test_a_batchnorm_without_running_statistics_is_not_paired():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert find_patterns(model).conv_bn == ()


def test_a_model_that_is_not_a_resnet():
    patterns = find_patterns(small_net())
    assert patterns.conv_bn == (("0", "1"),)
    assert patterns.blocks == (ResidualBlock(module="3", branch=("3.body.0", "3.body.1", "3.body.2"), add="3.add"),)
    assert patterns.adds == ("3.add",)
    assert patterns.shared == (SharedTensor("2", (("3.body.0", 0), ("3.add", 0))),)


def test_a_module_called_twice_or_a_read_through_arithmetic_is_not_shared():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()
            self.a, self.b, self.c = (nn.Conv2d(4, 4, 1) for _ in range(3))

        def forward(self, x):
            y = self.relu(x)
            z = self.relu(self.a(y))  # a second call of relu: a quantizer on it would act on both
            return self.b(z) + self.c(z) + self.c(y * 2)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu, self.a, self.b = nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.relu(x)
            return self.a(y) + self.b(y * 2)  # b reads other values than a

    assert find_patterns(Twice()).shared == find_patterns(Scaled()).shared == ()


def test_a_model_without_adds_has_no_blocks():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    patterns = find_patterns(model)
    assert patterns.conv_bn == (("0", "1"), ("3", "4"))
    assert patterns.blocks == () and patterns.adds == ()
