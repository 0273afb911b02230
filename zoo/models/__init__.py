"""Model families; importing this module registers every architecture with timm."""

from zoo.models import (
    binary_cifar_resnet,
    binary_imagenet_resnet,
    binary_resnet18_cifar,
    binary_vgg_small,
    cifar_resnet,
)
from zoo.models.cifar_resnet import CifarResNet

BINARY_FAMILY_MODULES = (binary_cifar_resnet, binary_imagenet_resnet, binary_resnet18_cifar, binary_vgg_small)
FAMILY_MODULES = (cifar_resnet, *BINARY_FAMILY_MODULES)

__all__ = ["BINARY_FAMILY_MODULES", "CifarResNet", "FAMILY_MODULES"]
