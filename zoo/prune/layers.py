"""Prunable layers: which convs can lose output channels, and which modules must follow them (the coupling rules).

A prunable layer is a conv whose output channels pass, one for one, through a BN (and, in UCP's SE-augmented
parents, an MSEB gate) into the input channels of its consumers, and reach nothing else: no shortcut, no
concatenation. Removing a channel then removes one filter of the conv, one BN (and gate) channel and one input
channel of every consumer, and leaves the rest of the network as it is. Each family states its rule explicitly:

- residual basic block (CIFAR ResNets; ``resnet18_dense``, ``resnet34_dense``): ``conv1`` → ``bn1`` (→ ``se``) →
  ``conv2``; model argument ``inner_widths``. ``conv2`` writes the residual width, which the shortcut fixes.
- bottleneck (``resnet50_dense``): two layers per block, ``conv1`` → ``bn1`` → ``conv2`` (``inner_widths``) and
  ``conv2`` → ``bn2`` → ``conv3`` (``mid_widths``); ``conv3`` writes the residual width. The layers come in network
  order (a block's conv1, then its conv2); methods choose which to cut (UCP: only conv2; ACP: one shared width).
- CIFAR VGG (``vgg16_cifar``, ``vgg19_cifar``): every ``conv`` → ``bn`` → the next block's ``conv``, or for the last
  conv the first Linear after the global pool (the classifier ``fc``; for layout ``"ucp"`` the hidden layer
  ``pre_logits.fc``); model argument ``widths``. Max-pools and the average pool act channel by channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from zoo.models import cifar_resnet, imagenet_resnet
from zoo.models.cifar_vgg import CifarVgg, VggBlock
from zoo.nn.mseb import MSEB

BASIC_BLOCKS = (cifar_resnet.BasicBlock, imagenet_resnet.BasicBlock)


@dataclass(frozen=True)
class PrunableLayer:
    """A conv whose output channels can be removed, with every module that sees those channels.

    ``norm`` and ``gate`` follow the conv channel for channel; each of ``consumers`` (a conv or a Linear; none for
    a headless network's last conv) takes them as its input channels. ``model_arg`` is the model argument (a list
    with one entry per layer of that kind, in network order) that rebuilds this layer's width.
    """

    name: str  # the conv's name in the model
    model_arg: str
    conv: nn.Conv2d = field(repr=False)
    norm: nn.BatchNorm2d = field(repr=False)
    consumers: tuple[nn.Conv2d | nn.Linear, ...] = field(repr=False)
    gate: MSEB | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return self.conv.out_channels


def _gate(block: nn.Module) -> MSEB | None:
    """The block's MSEB (UCP's SE-augmented parents), if it has one."""
    return block.se if isinstance(getattr(block, "se", None), MSEB) else None


def basic_block_layers(name: str, block: nn.Module) -> list[PrunableLayer]:
    """A basic block's one prunable layer: its inner width (conv1's output)."""
    return [PrunableLayer(f"{name}.conv1", "inner_widths", block.conv1, block.bn1, (block.conv2,), _gate(block))]


def bottleneck_layers(name: str, block: imagenet_resnet.Bottleneck) -> list[PrunableLayer]:
    """A bottleneck's two prunable layers: conv1's output (inner width), then conv2's (mid width)."""
    return [
        PrunableLayer(f"{name}.conv1", "inner_widths", block.conv1, block.bn1, (block.conv2,)),
        PrunableLayer(f"{name}.conv2", "mid_widths", block.conv2, block.bn2, (block.conv3,), _gate(block)),
    ]


def residual_layers(model: nn.Module) -> list[PrunableLayer]:
    """The prunable layers of every basic block and bottleneck of ``model``, in network order."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, imagenet_resnet.Bottleneck):
            layers += bottleneck_layers(name, module)
        elif isinstance(module, BASIC_BLOCKS):
            layers += basic_block_layers(name, module)
    return layers


def vgg_head_consumers(model: CifarVgg) -> tuple[nn.Linear, ...]:
    """The Linear that takes the last conv's (pooled) channels: UCP's hidden layer, else the classifier, if any."""
    first = model.pre_logits.fc if isinstance(model.pre_logits, nn.Sequential) else model.fc
    return (first,) if isinstance(first, nn.Linear) else ()


def vgg_layers(model: CifarVgg) -> list[PrunableLayer]:
    """Every conv of a CIFAR VGG, each consumed by the next conv, the last by the head."""
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, VggBlock)]
    consumers = [(block.conv,) for _, block in blocks[1:]] + [vgg_head_consumers(model)]
    return [
        PrunableLayer(f"{name}.conv", "widths", block.conv, block.bn, following, _gate(block))
        for (name, block), following in zip(blocks, consumers, strict=True)
    ]


def _input_width(consumer: nn.Conv2d | nn.Linear) -> int:
    return consumer.in_channels if isinstance(consumer, nn.Conv2d) else consumer.in_features


def _check_one_to_one(layer: PrunableLayer) -> None:
    """A consumer that reads more inputs than the conv has channels (e.g. after a concat-pool) breaks the rule."""
    for consumer in layer.consumers:
        if _input_width(consumer) != layer.width:
            raise TypeError(
                f"{layer.name}: its {layer.width} channels do not map one to one onto the {_input_width(consumer)} "
                f"inputs of the {type(consumer).__name__} that follows"
            )


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The prunable layers of ``model`` (CIFAR VGG, or ResNets of basic blocks or bottlenecks), in network order."""
    layers = vgg_layers(model) if isinstance(model, CifarVgg) else residual_layers(model)
    if not layers:
        raise TypeError(f"{type(model).__name__} has no prunable layers (CIFAR VGG convs, basic blocks, bottlenecks)")
    for layer in layers:
        _check_one_to_one(layer)
    return layers


def layer_widths(model: nn.Module) -> list[int]:
    """The width of every prunable layer, in network order: the widths a plan for ``model`` covers."""
    return [layer.width for layer in prunable_layers(model)]


def model_arg_widths(layers: list[PrunableLayer]) -> dict[str, list[int]]:
    """The layers' widths grouped by the model argument that rebuilds them (each list in network order)."""
    widths: dict[str, list[int]] = {}
    for layer in layers:
        widths.setdefault(layer.model_arg, []).append(layer.width)
    return widths


def prunable_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual basic blocks of ``model``, in network order: one prunable layer each (conv1 -> bn1 -> conv2)."""
    blocks = [m for m in model.modules() if isinstance(m, BASIC_BLOCKS)]
    if not blocks:
        raise TypeError(f"{type(model).__name__} has no prunable basic blocks (conv1 -> bn1 -> conv2)")
    return blocks
