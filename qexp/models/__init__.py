from qexp.models.resnet import ResNet, count_parameters, resnet20

__all__ = ["ResNet", "count_parameters", "resnet20"]
