from qexp.models.resnet import ResNet, count_parameters, dead_residual_channels, resnet20
from qexp.models.wide import WideNet, widenet

__all__ = ["ResNet", "WideNet", "count_parameters", "dead_residual_channels", "resnet20", "widenet"]
