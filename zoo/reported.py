"""Results REPORTED by the five papers, transcribed as data. Nothing here was measured by the zoo.

Transcribed from the group's public material (collected in the team's research notes): the README tables of
``pingxue-hfut/IR2Net`` and ``pingxue-hfut/SD-BNN``, the result-table images committed in
``JingfeiChang/ACP-Automatic-Channel-Pruning`` (``table/table1-4.png``) and the AIP and UCP abstracts (their full
texts and tables were not retrievable). Numbers keep the precision their source prints. Each row names the zoo
architecture that implements that configuration, where the zoo has one: the leaderboard shows these rows in a
separate table, "Reported by the papers (not measured here)", and never beside or inside the measured one.

Conventions, as in the sources: accuracies in %; ``params_m`` / ``flops_m`` in millions (FLOPs = multiply-accumulates
per image); ``*_reduction_pct`` = how much smaller than the paper's baseline, in %; ``top1_drop`` = baseline top-1
minus the compressed model's top-1, in points (negative: the compressed model is more accurate). ``None`` = not given.
"""

from __future__ import annotations

import dataclasses

IR2NET_README = "IR²Net README"
SDBNN_README = "SD-BNN README"
ACP_TABLES = "ACP repo table images"
AIP_ABSTRACT = "AIP abstract (arXiv 2108.13591)"
UCP_ABSTRACT = "UCP abstract (arXiv 2010.01251)"


@dataclasses.dataclass(frozen=True)
class ReportedResult:
    """One result as a paper reports it."""

    method: str  # the paper whose table or abstract the row comes from
    dataset: str
    model: str  # the network as the paper names it
    source: str
    setting: str = ""  # e.g. ACP's DBSCAN ε
    weight_bits: int | None = None
    activation_bits: int | None = None
    top1: float | None = None
    top5: float | None = None
    top1_drop: float | None = None
    params_m: float | None = None
    flops_m: float | None = None
    params_reduction_pct: float | None = None
    flops_reduction_pct: float | None = None
    zoo_architecture: str | None = None  # the registered architecture that implements this configuration
    note: str = ""
    baseline: bool = False  # the paper's uncompressed reference model

    @property
    def status(self) -> str:
        return "reported baseline" if self.baseline else "reported"


def _bnn(method: str, source: str, dataset: str, model: str, top1: float, top5: float | None, arch: str,
         weight_bits: int = 1, note: str = "") -> ReportedResult:  # fmt: skip
    return ReportedResult(method, dataset, model, source, weight_bits=weight_bits, activation_bits=1, top1=top1,
                          top5=top5, zoo_architecture=arch, note=note)  # fmt: skip


def _acp(dataset: str, model: str, setting: str, top1: float, top5: float | None, params_m: float, flops_m: float,
         params_red: float | None, flops_red: float | None, arch: str | None) -> ReportedResult:  # fmt: skip
    baseline = setting == "baseline"
    note = "" if baseline or arch is None else "pruned widths are per run (set by the search; in model_args)"
    return ReportedResult("ACP", dataset, model, ACP_TABLES, "" if baseline else setting, 32, 32, top1, top5,
                          params_m=params_m, flops_m=flops_m, params_reduction_pct=params_red,
                          flops_reduction_pct=flops_red, zoo_architecture=arch, note=note,
                          baseline=baseline)  # fmt: skip


C10, C100, IN = "CIFAR-10", "CIFAR-100", "ImageNet"

# fmt: off
REPORTED: tuple[ReportedResult, ...] = (
    # IR²Net README (W/A = 1/1)
    _bnn("IR²Net", IR2NET_README, C10, "ResNet-20", 87.2, None, "resnet20_ir2net"),
    _bnn("IR²Net", IR2NET_README, C10, "VGG-Small", 91.5, None, "vgg_small_ir2net"),
    _bnn("IR²Net", IR2NET_README, C10, "ResNet-18", 92.5, None, "resnet18_cifar_ir2net"),
    _bnn("IR²Net", IR2NET_README, IN, "IR²Net-A (ResNet-18)", 68.2, 88.0, "resnet18_ir2net"),
    _bnn("IR²Net", IR2NET_README, IN, "IR²Net-B (ResNet-18)", 67.0, 87.1, "resnet18_ir2net_b"),
    _bnn("IR²Net", IR2NET_README, IN, "IR²Net-C (ResNet-18)", 66.6, 87.0, "resnet18_ir2net_c"),
    _bnn("IR²Net", IR2NET_README, IN, "IR²Net-D (ResNet-18)", 63.8, 85.5, "resnet18_ir2net_d"),
    # SD-BNN README
    _bnn("SD-BNN", SDBNN_README, C10, "ResNet-20", 86.9, None, "resnet20_sdbnn"),
    _bnn("SD-BNN", SDBNN_README, C10, "VGG-Small", 90.8, None, "vgg_small_sdbnn"),
    _bnn("SD-BNN", SDBNN_README, C10, "ResNet-18", 92.5, None, "resnet18_cifar_sdbnn"),
    _bnn("SD-BNN", SDBNN_README, IN, "ResNet-18", 66.5, 86.7, "resnet18_sdbnn"),
    _bnn("SD-BNN", SDBNN_README, IN, "ResNet-18", 67.6, 87.4, "resnet18_sdbnn", weight_bits=32,
         note="real-valued weights: model_args binarize_weights=False"),
    # ACP repo tables: CIFAR-10
    _acp(C10, "VGG-16", "baseline", 93.60, None, 14.73, 314.59, None, None, "vgg16_cifar"),
    _acp(C10, "VGG-16", "ε=0.010", 94.03, None, 5.02, 152.64, 65.72, 51.48, "vgg16_cifar"),
    _acp(C10, "VGG-16", "ε=0.020", 93.66, None, 2.76, 93.52, 81.28, 70.25, "vgg16_cifar"),
    _acp(C10, "VGG-16", "ε=0.035", 93.45, None, 1.23, 83.54, 91.66, 73.44, "vgg16_cifar"),
    _acp(C10, "ResNet-56", "baseline", 93.18, None, 0.85, 127.62, None, None, "resnet56"),
    _acp(C10, "ResNet-56", "ε=0.035", 93.78, None, 0.59, 78.31, 30.59, 38.64, "resnet56_acp"),
    _acp(C10, "ResNet-56", "ε=0.075", 93.39, None, 0.35, 58.17, 58.82, 54.42, "resnet56_acp"),
    _acp(C10, "ResNet-56", "ε=0.080", 92.91, None, 0.30, 53.80, 64.71, 57.84, "resnet56_acp"),
    _acp(C10, "ResNet-110", "baseline", 93.32, None, 1.73, 256.04, None, None, "resnet110"),
    _acp(C10, "ResNet-110", "ε=0.085", 94.33, None, 0.65, 92.29, 62.43, 63.95, "resnet110"),
    _acp(C10, "ResNet-110", "ε=0.130", 94.07, None, 0.49, 78.11, 71.68, 69.49, "resnet110"),
    _acp(C10, "ResNet-110", "ε=0.300", 93.65, None, 0.33, 55.52, 80.92, 78.32, "resnet110"),
    _acp(C10, "GoogLeNet", "baseline", 94.72, None, 6.17, 1533.96, None, None, None),
    _acp(C10, "GoogLeNet", "ε=0.030", 95.16, None, 3.95, 901.60, 35.98, 41.22, None),
    _acp(C10, "GoogLeNet", "ε=0.070", 95.12, None, 2.90, 620.36, 53.00, 59.56, None),
    _acp(C10, "GoogLeNet", "ε=0.200", 95.09, None, 2.08, 453.38, 66.29, 70.44, None),
    # ACP repo tables: CIFAR-100
    _acp(C100, "VGG-19", "baseline", 72.01, None, 20.09, 399.52, None, None, "vgg19_cifar"),
    _acp(C100, "VGG-19", "ε=0.005", 73.12, None, 10.03, 239.77, 50.07, 39.99, "vgg19_cifar"),
    _acp(C100, "VGG-19", "ε=0.010", 71.95, None, 5.22, 146.87, 74.02, 63.24, "vgg19_cifar"),
    _acp(C100, "ResNet-56", "baseline", 71.36, None, 0.86, 127.09, None, None, "resnet56"),
    _acp(C100, "ResNet-56", "ε=0.030", 71.77, None, 0.58, 82.21, 32.56, 35.31, "resnet56_acp"),
    _acp(C100, "ResNet-56", "ε=0.060", 71.15, None, 0.45, 60.73, 47.67, 52.21, "resnet56_acp"),
    _acp(C100, "ResNet-110", "baseline", 72.15, None, 1.73, 256.04, None, None, "resnet110"),
    _acp(C100, "ResNet-110", "ε=0.040", 73.00, None, 0.96, 135.71, 44.51, 47.00, "resnet110"),
    _acp(C100, "ResNet-110", "ε=0.070", 72.49, None, 0.74, 119.33, 57.23, 53.39, "resnet110"),
    # ACP repo tables: ImageNet (the zoo's dense ImageNet ResNets take the pruned widths; none is trained here)
    _acp(IN, "ResNet-18", "baseline", 70.02, 89.23, 11.69, 1819.87, None, None, "resnet18_dense"),
    _acp(IN, "ResNet-18", "ε=0.005", 67.82, 88.41, 5.06, 1197.99, 56.72, 34.17, "resnet18_dense"),
    _acp(IN, "ResNet-18", "ε=0.010", 66.24, 87.12, 4.51, 959.66, 61.42, 47.27, "resnet18_dense"),
    _acp(IN, "ResNet-34", "baseline", 73.40, 91.44, 21.80, 3672.07, None, None, "resnet34_dense"),
    _acp(IN, "ResNet-34", "ε=0.010", 73.03, 91.32, 15.38, 2525.73, 29.45, 31.22, "resnet34_dense"),
    _acp(IN, "ResNet-34", "ε=0.030", 72.08, 90.57, 9.14, 1625.64, 58.07, 55.73, "resnet34_dense"),
    _acp(IN, "ResNet-50", "baseline", 75.94, 92.93, 25.56, 4112.32, None, None, "resnet50_dense"),
    _acp(IN, "ResNet-50", "ε=0.020", 75.53, 92.72, 11.58, 2186.87, 54.69, 46.82, "resnet50_dense"),
    _acp(IN, "ResNet-50", "ε=0.040", 74.64, 92.19, 9.11, 1507.46, 64.36, 63.34, "resnet50_dense"),
    # Abstract-only headlines: relative numbers, no absolute accuracy
    ReportedResult("AIP", IN, "ResNet-18", AIP_ABSTRACT, weight_bits=32, activation_bits=32, top1_drop=0.66,
                   params_reduction_pct=36.78, flops_reduction_pct=45.55, zoo_architecture="resnet18_dense",
                   note="abstract headline; baseline not stated"),
    ReportedResult("UCP", C100, "VGG-19", UCP_ABSTRACT, weight_bits=32, activation_bits=32, top1_drop=-0.54,
                   params_reduction_pct=82, flops_reduction_pct=62, zoo_architecture="vgg19_cifar",
                   note="abstract headline (accuracy +0.54 after retraining); baseline not stated"),
)
# fmt: on
