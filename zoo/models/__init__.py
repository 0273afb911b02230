"""Model families; importing this module registers every architecture with timm."""

from zoo.models import (
    binary_cifar_resnet,
    binary_imagenet_resnet,
    binary_resnet18_cifar,
    binary_vgg_small,
    cifar_resnet,
)
from zoo.models.cifar_resnet import CifarResNet

FAMILY_MODULES = (cifar_resnet, binary_cifar_resnet, binary_imagenet_resnet, binary_resnet18_cifar, binary_vgg_small)

__all__ = ["CifarResNet", "FAMILY_MODULES"]
