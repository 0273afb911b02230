"""Binary layers in their inference form: packed 1-bit weights run by the zoo's popcount kernels.

``to_inference(model)`` replaces every binary convolution by a :class:`PackedBinaryConv2d` holding its weight
signs packed once (64 per int64 word, OHWI along input channels; SD-BNN's weight self-distribution shift is
folded in, since only the sign of the shifted weight matters). SD-BNN's activation self-distribution becomes
the packer's per-sample, per-channel threshold: sign(a + s) = 1 exactly when a >= -s. Everything else (BN,
activations, shortcuts, the full-precision stem and head) stays as it is, so the inference form computes the
same function as the fake-quant model.

Checkpoints store binary weights the same way (``<conv>.weight_packed``); :func:`unpack_binary_weights` turns
them back into exact ±1 tensors when a model is built for training or fine-tuning.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from zoo.errors import ShapeMismatchError
from zoo.kernels import binary_conv2d, pack_weights, unpack_weights
from zoo.nn import BinaryConv2d
from zoo.nn.self_distribution import ActivationSelfDistribution

PACKED_SUFFIX = ".weight_packed"


class PackedBinaryConv2d(nn.Module):
    """A binary convolution on packed weights (inference only, no autograd)."""

    binary = True

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("the packed kernels support groups=1 and dilation=1 only")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.asd: ActivationSelfDistribution | None = copy.deepcopy(getattr(conv, "asd", None))
        with torch.no_grad():
            self.register_buffer("weight_packed", pack_weights(conv.binary_weight()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threshold = -self.asd(x)[:, :, 0, 0] if self.asd is not None else None
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = binary_conv2d(
            x,
            self.weight_packed,
            self.out_channels,
            self.in_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            threshold=threshold,
        )
        return out.contiguous(memory_format=layout)  # keep the model's layout: the float ops after it round alike

    def extra_repr(self) -> str:
        k, s, p = self.kernel_size, self.stride, self.padding
        return f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={s}, padding={p}, packed"


def to_inference(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """A copy of ``model`` in eval mode whose binary convolutions run on packed weights.

    By default the copy keeps the model's layout and its logits equal the fake-quant model's bit for bit.
    ``channels_last=True`` is faster on CPUs (pooling, BN and activations run fastest in it, and it is the
    kernels' native output); its float ops round differently, so an activation within an ulp of zero may take
    the other sign (predictions agreed on all 10,000 Fashion-MNIST test images of the released BNNs).
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BinaryConv2d):
                setattr(module, child_name, PackedBinaryConv2d(child))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def binary_layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BinaryConv2d)]


def pack_binary_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict whose binary-conv weights are stored as their packed signs (1 bit each)."""
    packed = dict(state_dict)
    modules = dict(model.named_modules())
    for name in binary_layer_names(model):
        with torch.no_grad():
            packed[name + PACKED_SUFFIX] = pack_weights(modules[name].binary_weight()).contiguous()
        del packed[name + ".weight"]
    return packed


def unpack_binary_weights(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: packed binary weights back to exact ±1 float weights of the model's shape."""
    if not any(k.endswith(PACKED_SUFFIX) for k in state_dict):
        return state_dict
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    out = {}
    for key, value in state_dict.items():
        if key.endswith(PACKED_SUFFIX):
            weight_key = key[: -len(PACKED_SUFFIX)] + ".weight"
            if weight_key not in shapes:
                out[key] = value  # left for strict loading to report as unexpected
                continue
            try:
                out[weight_key] = unpack_weights(value, shapes[weight_key])
            except ValueError as err:
                raise ShapeMismatchError(
                    f"{key} does not fit the model's {weight_key} {shapes[weight_key]}: {err}. Fix: config.json's "
                    "architecture and model_args must describe the saved weights."
                ) from err
        else:
            out[key] = value
    return out
