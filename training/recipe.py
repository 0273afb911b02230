"""A training recipe: one YAML file that fully describes how a released checkpoint is produced."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class ModelSection:
    architecture: str
    args: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # safetensors to start from, loaded non-strictly (two-step training, step 2)
    pretrained: str | None = None  # a checkpoint to fine-tune (registry id, hf-hub: or local-dir:), new head
    freeze_backbone: bool = False  # train the classifier only


@dataclass
class TeacherSection:
    """A frozen teacher for distillation objectives (torchvision architecture names)."""

    architecture: str = "resnet34"
    pretrained: bool = True  # torchvision's ImageNet weights; False only for smoke tests


@dataclass
class DataSection:
    dataset: str = "fashion_mnist"
    crop_padding: int = 0
    hflip: bool = False
    holdout: int = 0  # training images kept out of training, for any selection (never the test split)
    limit: int | None = None  # use only the first N training images (smoke tests)
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
    name: str = "cosine"  # cosine | linear | constant
    warmup_fraction: float = 0.0


@dataclass
class TrainSection:
    epochs: int = 1
    batch_size: int = 128
    seed: int = 0
    label_smoothing: float = 0.0
    channels_last: bool = True
    checkpoint_every: int = 200  # optimizer steps between resumable saves (also saved at each epoch end)
    eval_batch_size: int = 1000
    log_param_checksums: bool = False  # per-step weight checksums per rank (data-parallel tests)
    objective: str = "cross_entropy"  # see training/objectives.py
    teacher: TeacherSection | None = None


@dataclass
class ExportSection:
    method: str = "dense"  # names cards/methods/<method>.md
    dense_parent: str | None = None  # checkpoint id of the uncompressed model this one derives from
    finetuned_from: str | None = None  # checkpoint id this one was fine-tuned from


@dataclass
class Recipe:
    id: str
    model: ModelSection
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportSection = field(default_factory=ExportSection)
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
        }
        unknown = set(raw) - {"id", "notes", *sections}
        if unknown:
            raise ValueError(f"recipe {path or ''}: unknown top-level keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {"id": raw["id"], "notes": raw.get("notes", ""), "path": path}
        for name, section in sections.items():
            if name in raw:
                fields = {f.name for f in dataclasses.fields(section)}
                bad = set(raw[name]) - fields
                if bad:
                    raise ValueError(f"recipe {path or ''}: unknown keys {sorted(bad)} in '{name}'")
                kwargs[name] = section(**_checked_numbers(section, raw[name], f"{path or ''}: {name}"))
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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        return out
