"""Binary layers in their inference form: packed 1-bit weights run by the zoo's popcount kernels.

``to_inference(model)`` replaces every binary convolution by a :class:`PackedBinaryConv2d` holding its weight
signs packed once (64 per int64 word, OHWI along input channels; SD-BNN's weight self-distribution shift is
folded in, since only the sign of the shifted weight matters). SD-BNN's activation self-distribution becomes
the packer's per-sample, per-channel threshold: sign(a + s) = 1 exactly when a >= -s. An eval-mode BatchNorm that
reads only a binary conv's output (a pair its block declares in ``conv_bn_pairs``) is folded into the kernel's
epilogue as a per-channel scale and bias; everything else (other BNs, activations, shortcuts, the full-precision stem
and head) stays as it is, so the inference form computes the same function as the fake-quant model. A block's
residual unit ``act(bn(conv(x)) + residual)`` (:func:`zoo.nn.residual_unit.conv_bn_add_act`) whose BN was folded runs
the add and its PReLU / Hardtanh in the same epilogue.

Checkpoints store binary weights the same way (``<conv>.weight_packed``); :func:`unpack_binary_weights` turns
them back into exact ±1 tensors when a model is built for training or fine-tuning. The classifier's weight
matrix (after the last binarisation, so rounding it moves logits by ~1e-3 and flips no activation sign) may be
stored in float16 and is widened back to the model's dtype on load. Everything before it stays float32: rounding
the stem, a shortcut or an SE branch to float16 flips signs downstream (it changed 75% of a ResNet-20 BNN's
predictions when tried).
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ShapeMismatchError
from zoo.kernels import pack_weights, unpack_weights
from zoo.kernels.binary import conv_geometry, fuses_asd_threshold, run_binary_conv2d
from zoo.kernels.blocked_conv import blocked_conv2d
from zoo.kernels.channels_last import affine_prelu, max_pool2d, pooled_affine_prelu
from zoo.nn import BinaryConv2d
from zoo.nn.self_distribution import ActivationSelfDistribution, activation_shift

PACKED_SUFFIX = ".weight_packed"
PACKED_LAYOUT = "1 bit each: <conv>.weight_packed, signs OHWI packed along input channels, 64 per int64 word"


class PackedBinaryConv2d(nn.Module):
    """A binary convolution on packed weights (inference only, no autograd).

    After :meth:`fold_batchnorm` it also applies that BN's eval-mode affine (buffers ``bn_scale``, ``bn_bias``) in
    the kernel's epilogue; :meth:`forward_add_act` adds a residual and an activation there too. SD-BNN's ASD
    threshold is computed inside the C++ kernel's call where it can be (by the same ATen ops as the ASD module, bit
    for bit), else here by the ASD module's function and passed to the kernel.
    """

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
        self.register_buffer("bn_scale", None)
        self.register_buffer("bn_bias", None)
        self.geometry = conv_geometry(
            self.weight_packed, self.out_channels, self.in_channels, self.kernel_size, self.stride, self.padding, 1, 1
        )

    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> bool:
        """Apply ``bn``'s eval-mode affine to this conv's output from now on; False, changing nothing, when it cannot
        be folded (a BN already folded here, ``bn`` in training mode or without running statistics, not float32,
        another width, or non-finite terms)."""
        terms = batchnorm_affine(bn) if self.bn_scale is None else None
        if terms is None or terms[0].shape != (self.out_channels,):
            return False
        self.bn_scale, self.bn_bias = terms
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x)

    def forward_add_act(self, x: torch.Tensor, residual: torch.Tensor | None, act: nn.Module) -> torch.Tensor | None:
        """``act(self(x) + residual)`` (``act(self(x))`` for ``residual=None``) with the add and ``act`` in the
        kernel's epilogue, the same float32 ops as PyTorch's; None (nothing computed) unless ``act`` is an un-hooked
        ``nn.PReLU``, ``nn.Hardtanh`` or ``nn.Identity``, this module has no hooks and ``residual`` is float32."""
        if _has_hooks(self) or _has_hooks(act) or (residual is not None and residual.dtype is not torch.float32):
            return None
        if type(act) is nn.PReLU:
            return self._conv(x, residual=residual, prelu_weight=act.weight.detach())
        if type(act) is nn.Hardtanh:
            return self._conv(x, residual=residual, clamp=(act.min_val, act.max_val))
        if type(act) is nn.Identity:
            return self._conv(x, residual=residual)
        return None

    def _conv(self, x: torch.Tensor, **epilogue) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected an (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        threshold, asd_weights = self._asd_terms(x)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = run_binary_conv2d(
            x, self.weight_packed, self.out_channels, self.in_channels, self.geometry, threshold, asd_weights,
            self.bn_scale, self.bn_bias, **epilogue,
        )  # fmt: skip
        return out.contiguous(memory_format=layout)  # keep the model's layout: the float ops after it round alike

    def _asd_terms(self, x: torch.Tensor) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """(threshold, asd_weights) for the kernel: the ASD weights where the kernel fuses their threshold, else the
        threshold -SE(x) computed here; (None, None) without ASD."""
        if self.asd is None:
            return None, None
        fc1, fc2 = self.asd.fc1.weight.detach(), self.asd.fc2.weight.detach()
        if fuses_asd_threshold(x, self.weight_packed):
            return None, (fc1, fc2)
        with torch.no_grad():
            return -activation_shift(x, fc1, fc2)[:, :, 0, 0], None

    def extra_repr(self) -> str:
        k, s, p = self.kernel_size, self.stride, self.padding
        folded = ", bn folded" if self.bn_scale is not None else ""
        return f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={s}, padding={p}, packed{folded}"


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, bias) with ``bn(x) == x * scale + bias`` per channel, or None unless ``bn`` is a float32 BatchNorm2d in
    eval mode with running statistics and finite terms.

    scale = weight / sqrt(running_var + eps), bias = bias - running_mean * scale, read off the BN itself (eval at
    x = 1 with zero mean and bias, and at x = 0) so that they carry the rounding of PyTorch's own BN kernel.
    """
    if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    if any(t is not None and t.dtype is not torch.float32 for t in (bn.weight, bn.bias, bn.running_var)):
        return None
    one, zero = bn.running_var.new_ones(1, bn.num_features, 1, 1), bn.running_var.new_zeros(1, bn.num_features, 1, 1)
    zeros = zero.flatten()
    with torch.no_grad():
        scale = F.batch_norm(one, zeros, bn.running_var, bn.weight, zeros, False, 0.0, bn.eps).flatten()
        bias = F.batch_norm(zero, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps).flatten()
    if not (scale.isfinite().all() and bias.isfinite().all()):
        return None
    return scale, bias


class FoldedBatchNormAct(nn.Module):
    """An eval-mode BatchNorm folded to its per-channel affine, then the PReLU that reads only its output (or nothing),
    in one pass (:func:`zoo.kernels.channels_last.affine_prelu`): the full-precision stem of the ImageNet BNNs.
    ``inplace``: its input is a temporary that nothing else reads (the conv before it), so it may be overwritten
    (never while autograd records it)."""

    def __init__(
        self, scale: torch.Tensor, bias: torch.Tensor, prelu_weight: torch.Tensor | None, inplace: bool = False
    ) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.register_buffer("prelu_weight", prelu_weight)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = self.inplace and not (torch.is_grad_enabled() and x.requires_grad)
        return affine_prelu(x, self.scale, self.bias, self.prelu_weight, inplace)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}, prelu={self.prelu_weight is not None}, inplace={self.inplace}"


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (dilation 1, floor mode, no indices) that runs the one-pass channels_last kernel where it can
    (:func:`zoo.kernels.channels_last.max_pool2d`), bit for bit PyTorch's result."""

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return max_pool2d(x, *self.window(), out)

    def window(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(kernel_size, stride, padding) as pairs."""
        pair = nn.modules.utils._pair
        return pair(self.kernel_size), pair(self.stride or self.kernel_size), pair(self.padding)


class BatchSlicedStem(nn.Module):
    """A full-precision stem (conv → :class:`FoldedBatchNormAct` → :class:`ChannelsLastMaxPool2d`) run on slices of
    the batch, each pooled straight into one output: bit for bit the unsliced stem, without materialising the
    conv's full-resolution output for the whole batch. That tensor (103 MB at batch 32 × 64 × 112 × 112) is a fresh
    mapping on every call, and its page faults were about 20 ms of a 47 ms stem; a slice of about ``slice_bytes``
    of conv output stays under glibc's 32 MiB ceiling for reusing freed memory and is served from the heap.
    Used where the stem's output is read by the max-pool alone (the models' ``pooled_stem_units``).

    ``blocked_conv=True`` (the channels_last inference form) runs the conv in oneDNN's channel-blocked layout where it
    can (:func:`zoo.kernels.blocked_conv.blocked_conv2d`; about 25 % faster than channels_last, read by the pool as it
    lies): equal to ``conv(x)`` up to float rounding, so the NCHW form, bit-exact against the model, keeps ``conv``."""

    slice_bytes = 16 << 20

    def __init__(
        self, conv: nn.Conv2d, norm_act: FoldedBatchNormAct, pool: ChannelsLastMaxPool2d, blocked_conv: bool = False
    ) -> None:
        super().__init__()
        self.conv, self.norm_act, self.pool, self.blocked_conv = conv, norm_act, pool, blocked_conv

    def _stem(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        # the BN + PReLU on the pooled grid only (zoo.kernels.channels_last.pooled_affine_prelu): bit for bit the
        # BN + PReLU pass then the max-pool, without the full-resolution pass
        terms = self.norm_act.scale, self.norm_act.bias, self.norm_act.prelu_weight
        features = blocked_conv2d(self.conv, x) if self.blocked_conv else None
        return pooled_affine_prelu(self.conv(x) if features is None else features, *terms, *self.pool.window(), out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, (stride_h, stride_w) = x.shape[0], self.conv.stride
        image_bytes = (
            self.conv.out_channels * -(-x.shape[2] // stride_h) * -(-x.shape[3] // stride_w) * x.element_size()
        )
        step = max(1, self.slice_bytes // image_bytes)
        # out= writes are invisible to autograd, and only the C++ pool (channels_last) writes into a view
        dense_layout = x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()
        if step >= n or torch.is_grad_enabled() or not dense_layout:
            return self._stem(x)
        first = self._stem(x[:step])
        shape, channels_last = (n, *first.shape[1:]), torch.channels_last
        out = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=channels_last)
        out[:step].copy_(first)
        for start in range(step, n, step):
            self._stem(x[start : start + step], out[start : start + step])
        return out


class PointwiseConvBatchNorm(nn.Module):
    """A float 1×1 stride-1 conv with the eval-mode BN after it folded into its weights and bias: on channels_last
    input one GEMM over the pixels (``addmm``, about twice as fast as oneDNN's 1×1 conv then the BN at these sizes),
    ``conv2d`` on any other layout. Bi-Real's downsampling shortcuts, in the channels_last inference form."""

    def __init__(self, conv: nn.Conv2d, scale: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        with torch.no_grad():
            weight = conv.weight.flatten(1) * scale[:, None]
            folded_bias = bias if conv.bias is None else bias + conv.bias * scale
        self.register_buffer("weight_t", weight.t().contiguous())  # (in, out): the GEMM's right operand
        self.register_buffer("bias", folded_bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            n, c, h, w = x.shape
            out = torch.addmm(self.bias, x.permute(0, 2, 3, 1).reshape(-1, c), self.weight_t)
            return out.view(n, h, w, -1).permute(0, 3, 1, 2)  # a channels_last (N, out, H, W) view
        return F.conv2d(x, self.weight_t.t()[:, :, None, None], self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight_t.shape[0]}, {self.weight_t.shape[1]}, bn folded"


def _fold_pointwise_convs(model: nn.Module) -> None:
    """Each plain 1×1 stride-1 conv directly followed by a foldable BN inside an ``nn.Sequential`` (its own forward,
    so the BN alone reads the conv's output) becomes a :class:`PointwiseConvBatchNorm` and an Identity; pairs with
    hooks stay."""
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            continue  # a subclass that runs its children otherwise makes no promise about who reads what
        for conv_name, bn_name in itertools.pairwise(list(module._modules)):
            conv, bn = module._modules[conv_name], module._modules[bn_name]
            if type(conv) is not nn.Conv2d or _has_hooks(conv) or _has_hooks(bn):
                continue
            pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
            if not pointwise or conv.groups != 1 or conv.weight.dtype is not torch.float32:
                continue
            terms = batchnorm_affine(bn)
            if terms is not None:
                setattr(module, conv_name, PointwiseConvBatchNorm(conv, *terms))
                setattr(module, bn_name, nn.Identity())


def _fuse_max_pools(model: nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not nn.MaxPool2d or _has_hooks(child):
                continue
            if child.dilation in (1, (1, 1)) and not child.ceil_mode and not child.return_indices:
                fused = ChannelsLastMaxPool2d(child.kernel_size, child.stride, child.padding)
                setattr(module, name, fused)


def _fold_stem_batchnorms(model: nn.Module) -> None:
    """Fold each (conv, BN, activation) unit a module declares in ``conv_bn_act_units`` (its promise that the BN
    alone reads the conv's output and the activation alone reads the BN's) into a :class:`FoldedBatchNormAct`, the
    activation becoming an Identity; units with hooks, an activation other than PReLU / Identity or a BN that cannot
    fold stay. The folded pass overwrites the conv's output unless the conv has hooks (one may keep that tensor)."""
    for module in model.modules():
        for conv_name, bn_name, act_name in getattr(module, "conv_bn_act_units", ()):
            conv, bn, act = (getattr(module, name, None) for name in (conv_name, bn_name, act_name))
            if bn is None or type(act) not in (nn.PReLU, nn.Identity) or _has_hooks(bn) or _has_hooks(act):
                continue
            terms = batchnorm_affine(bn)
            if terms is None:
                continue
            slope = act.weight.detach().clone() if type(act) is nn.PReLU else None
            inplace = isinstance(conv, nn.Conv2d) and not _has_hooks(conv)
            setattr(module, bn_name, FoldedBatchNormAct(*terms, slope, inplace))
            setattr(module, act_name, nn.Identity())


def _slice_pooled_stems(model: nn.Module, blocked_conv: bool) -> None:
    """Each folded (conv, BN + act, max-pool) unit a module declares in ``pooled_stem_units`` (its promise that the
    max-pool alone reads the stem's output) becomes one :class:`BatchSlicedStem` in the conv's place (its conv in
    oneDNN's blocked layout for ``blocked_conv``), the BN and the pool Identities; units with hooks stay. A
    ``feature_info`` tap at the stem's activation then sees the pooled stem, and its ``reduction`` says so."""
    for module in model.modules():
        for conv_name, bn_name, act_name, pool_name in getattr(module, "pooled_stem_units", ()):
            units = [getattr(module, name, None) for name in (conv_name, bn_name, act_name, pool_name)]
            conv, norm_act, act, pool = units
            if type(conv) is not nn.Conv2d or type(norm_act) is not FoldedBatchNormAct or type(act) is not nn.Identity:
                continue
            if type(pool) is not ChannelsLastMaxPool2d or any(_has_hooks(unit) for unit in units):
                continue
            setattr(module, conv_name, BatchSlicedStem(conv, norm_act, pool, blocked_conv))
            setattr(module, bn_name, nn.Identity())
            setattr(module, pool_name, nn.Identity())
            pool_stride = nn.modules.utils._pair(pool.stride or pool.kernel_size)[0]
            for info in getattr(module, "feature_info", ()):
                if info.get("module") in (conv_name, bn_name, act_name):
                    info["reduction"] *= pool_stride


def _fold_batchnorms(model: nn.Module) -> None:
    """Fold each BN a block declares in ``conv_bn_pairs`` into its packed conv and put an Identity in its place.

    ``conv_bn_pairs`` (names of (conv, BN) children) is the block's promise that the BN's input is exactly the conv's
    output and that nothing else reads that output; blocks without it keep their BNs. Hooks on either module would
    see different tensors after folding, so such pairs stay unfolded too.
    """
    for module in model.modules():
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if not isinstance(conv, PackedBinaryConv2d) or _has_hooks(conv) or bn is None or _has_hooks(bn):
                continue
            if conv.fold_batchnorm(bn):
                setattr(module, bn_name, nn.Identity())


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def to_inference(model: nn.Module, channels_last: bool = False, fold_bn: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode whose binary convolutions run on packed weights.

    ``fold_bn=True`` (default) folds each eval-mode BatchNorm that directly follows a binary conv (the pairs its block
    declares in ``conv_bn_pairs``) into the kernel's epilogue, ``fma(conv, scale, bias)`` with the scale and bias
    PyTorch's BN computes, and puts an ``nn.Identity`` in its place; a block's residual add and PReLU / Hardtanh after
    it run in the same epilogue (:func:`zoo.nn.residual_unit.conv_bn_add_act`): one pass over the output instead of
    four. A stem BN and the PReLU after it (units a model declares in ``conv_bn_act_units``) become one
    :class:`FoldedBatchNormAct` pass, and where the max-pool alone reads it (``pooled_stem_units``) the stem runs
    on slices of the batch (:class:`BatchSlicedStem`; the inference copy's stem tap is then after the pool; in the
    channels_last form its conv runs in oneDNN's blocked layout).
    Max-pools run the one-pass channels_last kernel (bit-exact, folded or not).
    The affine rounds once per element; PyTorch's CPU BN kernel does too in its AVX2 / AVX-512 builds (then
    the folded form is bit-exact as well), otherwise it rounds twice and the two agree to float32 rounding (the tests
    allow rtol = atol = 1e-5 on the logits), so an activation within an ulp of a sign threshold may flip.

    With ``fold_bn=False`` (every BN kept) the copy keeps the model's layout and its logits equal the fake-quant
    model's bit for bit.
    ``channels_last=True`` is the fastest form on CPUs (pooling, BN and activations run fastest in it, and it is the
    kernels' native output; with ``fold_bn`` a float 1×1 conv and its BN also become one GEMM with the BN in its
    weights, :class:`PointwiseConvBatchNorm`); its float ops round differently, so an activation within an ulp of
    zero may take the other sign (predictions agreed on all 10,000 Fashion-MNIST test images of the released BNNs).
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BinaryConv2d):
                setattr(module, child_name, PackedBinaryConv2d(child))
    _fuse_max_pools(model)
    if fold_bn:
        _fold_batchnorms(model)
        _fold_stem_batchnorms(model)
        _slice_pooled_stems(model, blocked_conv=channels_last)
        if channels_last:
            _fold_pointwise_convs(model)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def binary_layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BinaryConv2d)]


def classifier_weight_key(model: nn.Module) -> str | None:
    """The state-dict key of the classifier's weight matrix (timm's ``get_classifier()``), if it has one."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = {m: name for name, m in model.named_modules()}
    return f"{names[head]}.weight" if isinstance(head, nn.Linear) and head in names else None


def pack_binary_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], float16_head: bool = False
) -> dict[str, torch.Tensor]:
    """A state dict whose binary-conv weights are stored as their packed signs (1 bit each); with ``float16_head``
    the classifier's weight matrix is stored in float16."""
    packed = dict(state_dict)
    head = classifier_weight_key(model) if float16_head else None
    if head is not None:
        packed[head] = packed[head].to(torch.float16)
    modules = dict(model.named_modules())
    for name in binary_layer_names(model):
        with torch.no_grad():
            packed[name + PACKED_SUFFIX] = pack_weights(modules[name].binary_weight()).contiguous()
        del packed[name + ".weight"]
    return packed


def unpack_binary_weights(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: packed binary weights back to exact ±1 float weights of the model's shape,
    and float16-stored weights widened to the model's dtype."""
    own = model.state_dict()
    shapes = {name: tuple(p.shape) for name, p in own.items()}
    out = {}
    for key, value in state_dict.items():
        if value.dtype == torch.float16 and key in own and own[key].dtype != torch.float16:
            out[key] = value.to(own[key].dtype)
        elif key.endswith(PACKED_SUFFIX):
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
