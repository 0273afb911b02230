"""Model families; importing this module registers every architecture with timm."""

from zoo.models import binary_cifar_resnet, cifar_resnet
from zoo.models.cifar_resnet import CifarResNet

FAMILY_MODULES = (cifar_resnet, binary_cifar_resnet)

__all__ = ["CifarResNet", "FAMILY_MODULES"]
