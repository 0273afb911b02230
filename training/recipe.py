"""A training recipe: one YAML file that fully describes how a released checkpoint is produced."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml


def _checked_numbers(section: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Reject non-numbers in numeric fields (YAML reads ``1e-5`` without a dot as a string)."""
    numeric = {f.name: f.type for f in dataclasses.fields(section) if f.type in ("int", "float")}
    for key, kind in numeric.items():
        value = values.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int if kind == "int" else (int, float))
        ):
            raise ValueError(f"recipe {where}.{key} must be a {kind}, got {value!r} (write 1.0e-5, not 1e-5)")
    return values


def section_from_dict(section: type, values: dict[str, Any] | None, where: str) -> Any:
    """Build a settings dataclass from YAML values, naming any unknown key or non-numeric number."""
    values = dict(values or {})
    bad = set(values) - {f.name for f in dataclasses.fields(section)}
    if bad:
        raise ValueError(f"recipe {where}: unknown keys {sorted(bad)}")
    return section(**_checked_numbers(section, values, where))


@dataclass
class ModelSection:
    architecture: str
    args: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # safetensors to start from, loaded non-strictly (two-step training, step 2)
    pretrained: str | None = None  # a checkpoint to fine-tune (registry id, hf-hub: or local-dir:), new head
    freeze_backbone: bool = False  # train the classifier only


@dataclass
class TeacherSection:
    """A frozen teacher for distillation objectives: a zoo checkpoint, or a torchvision architecture."""

    architecture: str = "resnet34"
    pretrained: bool = True  # torchvision's ImageNet weights; False only for smoke tests
    checkpoint: str | None = None  # a zoo checkpoint (or run:<run dir>), e.g. the dense parent, not torchvision


@dataclass
class DataSection:
    dataset: str = "fashion_mnist"
    crop_padding: int = 0
    hflip: bool = False
    holdout: int = 0  # training images kept out of training, for any selection (never the test split)
    # The seed of the shuffle that picks the held-out images. None: the run's train.seed, so each seed of a release
    # holds out other images, most of which a parent or teacher shared by the seeds (trained with seed 0) has
    # trained on; set it (0) wherever seeds share such a run, so every seed holds out images none of them saw.
    holdout_seed: int | None = None
    limit: int | None = None  # train on the first N training images only (smoke runs; after the holdout)
    test_limit: int | None = None
    root: str | None = None  # a local <root>/<split>/<class>/<image> folder instead of the default source
    decode_on_demand: bool = False  # decode per batch with random-resized crops (ImageNet) instead of in memory


@dataclass
class OptimizerSection:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    decay: str = "matrices"  # matrices: >1-D parameters | all | conv: 4-D ones and names containing "conv"


@dataclass
class ScheduleSection:
    name: str = "cosine"  # cosine | linear | constant | step
    warmup_fraction: float = 0.0
    milestones: list[float] = field(default_factory=list)  # step: fractions of training where lr *= gamma
    gamma: float = 0.1  # step


#: train.mixed_precision -> the dtype the forwards autocast to (None: float32 throughout).
MIXED_PRECISION: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class TrainSection:
    epochs: int = 1
    batch_size: int = 128
    seed: int = 0
    # A release's seeds (each trained into runs/<id>-s<seed>; export releases the best on held-out images and
    # reports the spread); None: the one run of ``seed`` in runs/<id>.
    seeds: list[int] | None = None
    label_smoothing: float = 0.0
    channels_last: bool = True
    checkpoint_every: int = 200  # optimizer steps between resumable saves (also saved at each epoch end)
    eval_batch_size: int = 1000
    log_param_checksums: bool = False  # per-step weight checksums per rank (data-parallel tests)
    objective: str = "cross_entropy"  # see training/objectives.py
    teacher: TeacherSection | None = None
    # "bf16": forwards under torch.autocast(bfloat16) (convs in bf16; binary convs' forward still exact on the packed
    # kernel, their backward in bf16), losses and the optimizer in float32. "fp32": float32 throughout.
    mixed_precision: str = "fp32"  # not "no": YAML reads an unquoted no as false

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"recipe train.mixed_precision must be one of {sorted(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.seeds is not None and (
            not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(type(s) is int for s in self.seeds)
        ):
            raise ValueError(f"recipe train.seeds must be a list of distinct integers, got {self.seeds!r}")


@dataclass
class ExportSection:
    method: str = "dense"  # names cards/methods/<method>.md
    dense_parent: str | None = None  # checkpoint id of the uncompressed model this one derives from
    finetuned_from: str | None = None  # checkpoint id this one was fine-tuned from


@dataclass
class PruneSection:
    """The prune/search stage that runs before the final training (``training/prune.py``)."""

    method: str  # l1 | ucp | acp | aip: zoo/prune/<method>.py
    # The trained dense parent (checkpoint id, local-dir:/hf-hub:, run:<run dir> or torchvision:<arch>[.<weights>]):
    # the weights pruned and the reference. UCP may leave it out: the SE parent without its gates is the reference.
    parent: str | None = None
    parent_run_recipe: str | None = None  # the recipe that trains a run:<dir> parent, run first when it is missing
    parent_recipe: str | None = None  # UCP: recipe of the SE-augmented parent, trained first when missing
    unpruned_layers: list[int] = field(default_factory=list)  # ucp: prunable layers (by index) kept whole
    init: str = "inherit"  # inherit: start from the kept parent weights | scratch: random init
    flops_reduction: float = 0.5  # l1, aip: the FLOPs cut to reach (uniform ratio per layer)
    score_images: int = 2000  # ucp, acp: training images that score the channels
    threshold_factor: float = 1.0  # ucp: keep I_i > (1 ± λ) mean(I); this is 1 ± λ
    eps: float = 0.007  # acp: DBSCAN radius (cosine distance), the compression knob
    min_samples: int = 5  # acp: DBSCAN MinPts
    fitness_images: int = 5120  # acp: training images of each candidate's short training
    fitness_lr: float = 0.01  # acp: constant SGD lr of that training
    swarm: dict[str, Any] = field(default_factory=dict)  # acp: zoo.prune.swarm.SwarmSettings fields
    aip: dict[str, Any] = field(default_factory=dict)  # aip: zoo.prune.aip.AIPSettings fields


@dataclass
class Recipe:
    id: str
    model: ModelSection
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportSection = field(default_factory=ExportSection)
    prune: PruneSection | None = None
    notes: str = ""
    path: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: str | None = None) -> Recipe:
        sections = {
            "model": ModelSection,
            "data": DataSection,
            "optimizer": OptimizerSection,
            "schedule": ScheduleSection,
            "train": TrainSection,
            "export": ExportSection,
            "prune": PruneSection,
        }
        unknown = set(raw) - {"id", "notes", *sections}
        if unknown:
            raise ValueError(f"recipe {path or ''}: unknown top-level keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {"id": raw["id"], "notes": raw.get("notes", ""), "path": path}
        for name, section in sections.items():
            if raw.get(name) is not None:
                kwargs[name] = section_from_dict(section, raw[name], f"{path or ''}: {name}")
        if isinstance(kwargs.get("train"), TrainSection) and isinstance(kwargs["train"].teacher, dict):
            kwargs["train"].teacher = TeacherSection(**kwargs["train"].teacher)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """Read a YAML recipe, applying ``section.key=value`` overrides (values parsed as YAML)."""
        raw = yaml.safe_load(Path(path).read_text())
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"override '{item}' must look like section.key=value")
            *parents, leaf = key.split(".")
            node = raw
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        return cls.from_dict(raw, str(path))

    @property
    def holdout_split_seed(self) -> int:
        """The seed of the shuffle that picks this run's held-out images (``data.holdout_seed`` or ``train.seed``)."""
        return self.train.seed if self.data.holdout_seed is None else self.data.holdout_seed

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        return out


def run_identity(raw: dict[str, Any]) -> dict[str, Any]:
    """What a run's numbers depend on: the recipe with its defaults filled in, less its notes, its release's seed
    list and ``train.channels_last`` (so a recipe that gains or changes any of them still resumes the runs it
    started, and its seeds still count as one release). The memory layout changes rounding only, as another CPU
    does, and is a speed choice: a pruned net with odd widths trains 2.5x faster in NCHW on CPU. The held-out split
    is given by the seed that draws it (``data.holdout_seed: 0`` and a seed-0 run left to ``train.seed`` agree)."""
    recipe = Recipe.from_dict(raw)
    out = json.loads(json.dumps(recipe.to_dict()))  # as a result.json holds it (tuples as lists)
    out["data"]["holdout_seed"] = recipe.holdout_split_seed if recipe.data.holdout else None
    out.pop("notes")
    out["train"].pop("seeds")
    out["train"].pop("channels_last")
    return out
