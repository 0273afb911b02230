"""Model families; importing this module registers every architecture with timm."""

from zoo.models import (
    binary_cifar_resnet,
    binary_imagenet_resnet,
    binary_resnet18_cifar,
    binary_vgg_small,
    cifar_resnet,
    cifar_vgg,
    imagenet_resnet,
)
from zoo.models.cifar_resnet import CifarResNet
from zoo.models.cifar_vgg import CifarVgg
from zoo.models.imagenet_resnet import ImageNetResNet

BINARY_FAMILY_MODULES = (binary_cifar_resnet, binary_imagenet_resnet, binary_resnet18_cifar, binary_vgg_small)
FAMILY_MODULES = (cifar_resnet, cifar_vgg, imagenet_resnet, *BINARY_FAMILY_MODULES)

__all__ = ["BINARY_FAMILY_MODULES", "CifarResNet", "CifarVgg", "FAMILY_MODULES", "ImageNetResNet"]
