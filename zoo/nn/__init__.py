"""Layers of the zoo's compression methods: quantizers, binary convolutions, SD-BNN and IR²Net parts, UCP's MSEB."""

from zoo.nn.binary_conv import BinaryConv2d
from zoo.nn.ir2net import CIRec, attention_map, pool_and_concat, restriction_mask
from zoo.nn.mseb import MSEB
from zoo.nn.quantizers import SignQuantizer, ede_schedule, hard_sign
from zoo.nn.self_distribution import ActivationSelfDistribution, SelfDistributionBinaryConv2d

__all__ = [
    "ActivationSelfDistribution",
    "BinaryConv2d",
    "CIRec",
    "MSEB",
    "SelfDistributionBinaryConv2d",
    "SignQuantizer",
    "attention_map",
    "ede_schedule",
    "hard_sign",
    "pool_and_concat",
    "restriction_mask",
]
