"""Inference kernels for the zoo's compressed layers.

:mod:`zoo.kernels.binary`: packed XOR-popcount binary 2-D convolution for CPUs (AVX-512 VPOPCNTDQ / AVX2 / scalar,
built just in time as a C++ torch extension) with a pure-PyTorch fallback, bit-exact with ``BinaryConv2d``.
"""

from zoo.kernels.binary import (
    available_isas,
    binary_conv2d,
    kernel_backend,
    kernel_isa,
    kernel_unavailable_reason,
    pack_activations,
    pack_weights,
    set_kernel_isa,
    unpack_activations,
    unpack_weights,
)

__all__ = [
    "available_isas",
    "binary_conv2d",
    "kernel_backend",
    "kernel_isa",
    "kernel_unavailable_reason",
    "pack_activations",
    "pack_weights",
    "set_kernel_isa",
    "unpack_activations",
    "unpack_weights",
]
