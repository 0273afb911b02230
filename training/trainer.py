"""The Accelerate trainer: one recipe in, final weights and a metrics history out, resumable at any step.

Runs unchanged on one CPU, on N CPU processes (``torchrun --nproc_per_node N``: Accelerate's MULTI_CPU
with gloo) and on GPUs (``accelerate launch --multi_gpu``). The recipe's ``batch_size`` is the global batch:
each of N processes takes 1/N of it, so the optimisation is the same whatever N is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from tqdm.auto import tqdm

import zoo
from training.objectives import ObjectiveContext, get_objective
from training.recipe import MIXED_PRECISION, Recipe, run_identity, section_from_dict
from zoo.data import BatchAugment, BatchIterator, DecodedImages, dataset_spec, load_dataset, to_tensors
from zoo.evaluate import accuracy, predict_logits
from zoo.hub import read_safetensors
from zoo.provenance import git_commit
from zoo.prune.aip import AIPSettings

STATE_DIR = "state"
RESULT_FILE = "result.json"


def set_training_progress(model: torch.nn.Module, progress: float) -> None:
    """Tell scheduled layers (e.g. EDE quantizers) how far training is, once per epoch."""
    for module in model.modules():
        if hasattr(module, "set_training_progress"):
            module.set_training_progress(progress)


class TrainState:
    """Where the run is: registered with Accelerate so it is saved and restored with the weights."""

    def __init__(self, recipe: dict[str, Any] | None = None) -> None:
        self.recipe = recipe  # the recipe that wrote this state: resuming under another one is refused
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_loss_sum = 0.0  # of the current epoch's batches so far (this rank)
        self.epoch_seen = 0
        self.elapsed = 0.0  # training seconds over all sessions of the run
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("recipe")
        if self.recipe is not None and (saved is None or run_identity(saved) != run_identity(self.recipe)):
            raise ValueError(
                "The saved training state was written by a different recipe (or different overrides). Resume with "
                "the same recipe, or start fresh: delete the run's state/ folder or pass another --run-dir."
            )
        vars(self).update(state)


def lr_factor(
    schedule: str, warmup_fraction: float, step: int, total: int, milestones: Sequence[float] = (), gamma: float = 0.1
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``.

    ``step`` decays by ``gamma`` at each milestone (a fraction of all steps: 0.5 and 0.75 of 160 epochs are the
    papers' epochs 80 and 120).
    """
    warmup = int(warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(step >= round(m * total) for m in milestones)
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown schedule '{schedule}' (use cosine, linear, constant or step)")


def build_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = recipe.optimizer
    # "all" is the papers' CIFAR rule; "conv" the IR²Net ImageNet rule (4-D weights and names containing "conv").
    rules = {
        "matrices": lambda name, p: p.ndim > 1,
        "all": lambda name, p: True,
        "conv": lambda name, p: p.ndim == 4 or "conv" in name,
    }
    if opt.decay not in rules:
        raise ValueError(f"unknown decay rule '{opt.decay}' (use one of {sorted(rules)})")
    decays = rules[opt.decay]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if decays(n, p)]
    no_decay = [p for n, p in named if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=tuple(opt.betas))
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas))
    raise ValueError(f"unknown optimizer '{opt.name}' (use sgd, adam or adamw)")


def create_recipe_model(recipe: Recipe) -> torch.nn.Module:
    """The recipe's architecture, shaped for its dataset (classes, channels and, where fixed, image size)."""
    spec = dataset_spec(recipe.data.dataset)
    kwargs = {"num_classes": spec.num_classes, "in_chans": spec.input_size[0]}
    if timm.models.get_pretrained_cfg(recipe.model.architecture).fixed_input_size:
        kwargs["img_size"] = spec.input_size[1:]
    return timm.create_model(recipe.model.architecture, pretrained=False, **{**kwargs, **recipe.model.args})


RUN_PREFIX = "run:"
TORCHVISION_PREFIX = "torchvision:"


def torchvision_trained_model(name: str) -> torch.nn.Module:
    """``<arch>[.<weights>]`` (e.g. ``resnet50.IMAGENET1K_V1``): torchvision's trained weights (default: the
    architecture's DEFAULT ones) in the zoo's ``<arch>_dense``, whose widths the pruning methods can change."""
    arch, _, weights_name = name.partition(".")
    zoo_arch = f"{arch}_dense"
    if not timm.is_model(zoo_arch):
        raise ValueError(f"{TORCHVISION_PREFIX}{name}: the zoo has no '{zoo_arch}' to hold torchvision's '{arch}'")
    weights_enum = torchvision.models.get_model_weights(arch)
    if weights_name and weights_name not in weights_enum.__members__:
        raise ValueError(f"{TORCHVISION_PREFIX}{name}: '{arch}' has no weights '{weights_name}' "
                         f"(choose from {sorted(weights_enum.__members__)})")  # fmt: skip
    weights = weights_enum[weights_name] if weights_name else weights_enum.DEFAULT
    reference = torchvision.models.get_model(arch, weights=weights)
    model = timm.create_model(zoo_arch, num_classes=len(weights.meta["categories"]))
    model.load_state_dict(reference.state_dict(), strict=True)
    return model.eval()


def run_finished(run_dir: Path) -> bool:
    """Whether a training run finished: its ``result.json`` is written last, after ``final.safetensors``."""
    return (run_dir / RESULT_FILE).is_file() and (run_dir / "final.safetensors").is_file()


def load_trained_model(reference: str) -> torch.nn.Module:
    """A trained model, in eval mode: ``run:<run dir>`` (a finished training run), ``torchvision:<arch>[.<weights>]``
    (torchvision's ImageNet weights in the zoo's ``<arch>_dense``) or any ``zoo.from_pretrained`` id."""
    if reference.startswith(TORCHVISION_PREFIX):
        return torchvision_trained_model(reference[len(TORCHVISION_PREFIX) :])
    if not reference.startswith(RUN_PREFIX):
        return zoo.from_pretrained(reference).eval()
    run_dir = Path(reference[len(RUN_PREFIX) :])
    if not run_finished(run_dir):
        raise FileNotFoundError(
            f"{reference}: no finished run there (result.json and final.safetensors). Train it first: "
            "python -m training.train <its recipe> --run-dir " + str(run_dir)
        )
    result = json.loads((run_dir / "result.json").read_text())
    model = create_recipe_model(Recipe.from_dict(result["recipe"], result.get("recipe_path")))
    model.load_state_dict(read_safetensors(run_dir / "final.safetensors"), strict=True)
    return model.eval()


def param_checksum(model: torch.nn.Module) -> int:
    """A bit-exact fingerprint of the parameters, which data-parallel replicas must share.

    Buffers are left out: each rank updates BatchNorm's running statistics from its own part of the batch.
    """
    crc = 0
    for t in model.parameters():
        crc = zlib.crc32(t.detach().cpu().contiguous().numpy().tobytes(), crc)
    return crc


def write_json_atomically(record: dict[str, Any], path: Path) -> None:
    """Write ``record`` as JSON next to ``path``, then swap it in: a kill leaves the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def save_state_atomically(accelerator: Accelerator, run_dir: Path) -> None:
    """Save into a fresh folder, then swap it in: a kill at any moment leaves one complete state."""
    final, tmp, old = run_dir / STATE_DIR, run_dir / f"{STATE_DIR}.tmp", run_dir / f"{STATE_DIR}.old"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_state(run_dir: Path) -> Path | None:
    for name in (STATE_DIR, f"{STATE_DIR}.old"):  # .old survives a kill between the two renames
        if (run_dir / name).is_dir():
            return run_dir / name
    return None


Images = torch.Tensor | DecodedImages  # uint8 N×C×H×W in memory, or decoded per batch (ImageNet)


def load_split(recipe: Recipe, split: str, limit: int | None) -> tuple[Images, torch.Tensor]:
    """A split's images and labels: in memory, or (``data.decode_on_demand``) decoded when a batch needs them."""
    spec = dataset_spec(recipe.data.dataset)
    ds = load_dataset(recipe.data.dataset, split, recipe.data.root)
    if not recipe.data.decode_on_demand:
        return to_tensors(ds, spec, limit=limit)
    images = DecodedImages(ds.select(range(min(limit, len(ds)))) if limit is not None else ds, spec.input_size)
    return images, images.labels


def _take(images: Images, indices: torch.Tensor) -> Images:
    return images.select(indices) if isinstance(images, DecodedImages) else images[indices]


def training_and_holdout(recipe: Recipe) -> tuple[tuple[Images, torch.Tensor], tuple[Images, torch.Tensor]]:
    """The training split cut into the images that train and the ``data.holdout`` held out for any selection
    (a fixed shuffle of the whole split by ``recipe.holdout_split_seed``: the pruning search, its sub-runs and the
    final training agree on which is which). ``data.limit`` then keeps the first N training images: of the split as
    it is without a holdout, of the images left after it with one, so a short run never trains on the held-out
    images."""
    limit, held_out = recipe.data.limit, recipe.data.holdout
    if not held_out:  # nothing held out: the split as it is, in its own order
        x, y = load_split(recipe, "train", limit)
        return (x, y), (_take(x, torch.arange(0)), y[:0])
    x, y = load_split(recipe, "train", None)
    if held_out >= len(y):
        raise ValueError(
            f"data.holdout {held_out} leaves none of the {len(y)} training images to train on: lower data.holdout"
        )
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(recipe.holdout_split_seed))
    held, kept = order[:held_out], order[held_out:][:limit]
    return (_take(x, kept), y[kept]), (_take(x, held), y[held])


def emulates_bf16(recipe: Recipe, device: torch.device) -> bool:
    """Whether ``recipe`` asks for bf16 mixed precision on a CPU that lacks native bfloat16 arithmetic."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return recipe.train.mixed_precision == "bf16" and device.type == "cpu" and not native


class Trainer:
    """Trains ``recipe`` into ``run_dir`` (``state/`` to resume, ``metrics.jsonl``, ``final.safetensors``)."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, accelerator: Accelerator | None = None) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        # cpu=True is what makes Accelerate use MULTI_CPU (gloo) under torchrun when no GPU is present.
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.spec = dataset_spec(recipe.data.dataset)
        self.state = TrainState(recipe.to_dict())
        aip = section_from_dict(AIPSettings, recipe.prune.aip, "prune.aip") if recipe.prune else None
        self.objective = get_objective(
            recipe.train.objective, self.spec.num_classes, aip, self.accelerator.device, recipe.train.seed
        )
        self.objective_context = ObjectiveContext(
            recipe.train.label_smoothing, autocast_dtype=MIXED_PRECISION[recipe.train.mixed_precision]
        )
        self.commit = git_commit()  # at start: the code that runs, not what the tree holds at the end
        if emulates_bf16(recipe, self.accelerator.device):
            self.accelerator.print(
                f"warning: {recipe.id} trains in bf16 mixed precision, and this CPU has neither AVX512-BF16 nor AMX, "
                "so PyTorch emulates bfloat16 here (resnet56 training steps on an AVX2 AMD EPYC: 13 img/s in bf16 "
                "against 173 in fp32); expect many times the wall time, or resume this run on a CPU that has them "
                "or on a GPU (python -m training.park keeps its state for another machine)"
            )

    def _data(self) -> tuple[BatchIterator, tuple[Images, torch.Tensor], tuple[Images, torch.Tensor]]:
        """The training batches, the test split and the split each epoch is measured on: the held-out training
        images when the recipe holds some out (so no epoch-by-epoch look at the test split can steer a choice),
        else the test split."""
        r, acc = self.recipe, self.accelerator
        (train_x, train_y), holdout = training_and_holdout(r)
        test = load_split(r, "test", r.data.test_limit)
        transform = BatchAugment(self.spec.mean, self.spec.std, r.data.crop_padding, r.data.hflip)
        loader = BatchIterator(
            train_x, train_y, r.train.batch_size, transform, shuffle=True, augment=True, seed=r.train.seed,
            drop_last=True, rank=acc.process_index, world_size=acc.num_processes,
        )  # fmt: skip
        return loader, test, holdout if r.data.holdout else test

    def build_model(self) -> torch.nn.Module:
        r = self.recipe
        if r.model.pretrained:  # fine-tuning: the checkpoint's shape and weights, a new head for this dataset
            model = zoo.from_pretrained(
                r.model.pretrained, num_classes=self.spec.num_classes, in_chans=self.spec.input_size[0]
            )
        else:
            model = create_recipe_model(r)
        if r.model.freeze_backbone:
            model.requires_grad_(False)
            model.get_classifier().requires_grad_(True)
        if r.model.init_from:  # step 2 of two-step training starts from step 1, non-strictly as the papers do
            missing, unexpected = model.load_state_dict(read_safetensors(Path(r.model.init_from)), strict=False)
            self.accelerator.print(f"init_from {r.model.init_from}: missing {missing}, unexpected {unexpected}")
        return model

    def build_teacher(self) -> torch.nn.Module | None:
        spec = self.recipe.train.teacher
        if spec is None:
            return None
        if spec.checkpoint:
            return load_trained_model(spec.checkpoint).requires_grad_(False).to(self.accelerator.device)
        weights = torchvision.models.get_model_weights(spec.architecture).DEFAULT if spec.pretrained else None
        teacher = torchvision.models.get_model(spec.architecture, weights=weights)
        return teacher.eval().requires_grad_(False).to(self.accelerator.device)

    def compute_loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.objective(model, images, labels, self.objective_context)

    def _log(self, name: str, record: dict[str, Any]) -> None:
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def fit(self) -> dict[str, Any]:
        r, acc = self.recipe, self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores between local processes unless told otherwise
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // acc.num_processes))
        set_seed(r.train.seed)
        loader, (test_x, test_y), (epoch_x, epoch_y) = self._data()
        epoch_split = "val" if r.data.holdout else "test"
        model = self.build_model()
        self.objective_context.teacher = self.build_teacher()
        if r.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(r, model)
        total_steps = r.train.epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(
                r.schedule.name, r.schedule.warmup_fraction, s, total_steps, r.schedule.milestones, r.schedule.gamma
            ),
        )
        model, optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(scheduler, self.state)
        if hasattr(self.objective, "state_dict"):  # e.g. AIP's discriminator
            acc.register_for_checkpointing(self.objective)
        resume_from = latest_state(self.run_dir)
        if resume_from is not None:
            acc.load_state(str(resume_from))
            acc.print(f"resumed from {resume_from}: epoch {self.state.epoch}, batch {self.state.step_in_epoch}")

        while self.state.epoch < r.train.epochs:
            epoch = self.state.epoch
            model.train()
            set_training_progress(model, epoch / r.train.epochs)
            session_start, elapsed_before = time.time(), self.state.elapsed
            batches = loader.epoch(epoch, start_batch=self.state.step_in_epoch)
            bar = tqdm(batches, total=len(loader) - self.state.step_in_epoch, disable=not acc.is_main_process,
                       desc=f"epoch {epoch + 1}/{r.train.epochs}", unit="batch")  # fmt: skip
            for images, labels in bar:
                images, labels = images.to(acc.device), labels.to(acc.device)  # the loader batches on the CPU
                if r.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                loss = self.compute_loss(model, images, labels)
                optimizer.zero_grad(set_to_none=True)
                acc.backward(loss)
                optimizer.step()
                scheduler.step()
                self.state.epoch_loss_sum += loss.item() * len(labels)
                self.state.epoch_seen += len(labels)
                self.state.elapsed = elapsed_before + time.time() - session_start
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
                if r.train.log_param_checksums:
                    self._log(f"checksums.rank{acc.process_index}.jsonl",
                              {"step": self.state.global_step, "loss": loss.item(),
                               "checksum": param_checksum(acc.unwrap_model(model))})  # fmt: skip
                if self.state.global_step % r.train.checkpoint_every == 0:
                    save_state_atomically(acc, self.run_dir)
            metrics = accuracy(
                predict_logits(
                    acc.unwrap_model(model), epoch_x, self.spec.mean, self.spec.std, r.train.eval_batch_size
                ),
                epoch_y,
            )
            train_loss = self.state.epoch_loss_sum / max(self.state.epoch_seen, 1)
            record = {"epoch": epoch + 1, "train_loss": train_loss, f"{epoch_split}_top1": metrics["top1"],
                      f"{epoch_split}_top5": metrics["top5"], "lr": scheduler.get_last_lr()[0],
                      "seconds": round(self.state.elapsed, 1)}  # fmt: skip
            self.state.history.append(record)
            self.state.epoch += 1
            self.state.step_in_epoch = self.state.epoch_seen = 0
            self.state.epoch_loss_sum = 0.0
            if acc.is_main_process:
                self._log("metrics.jsonl", record)
                acc.print(json.dumps(record))
            save_state_atomically(acc, self.run_dir)

        result = self._finish(acc.unwrap_model(model), test_x, test_y)
        acc.wait_for_everyone()
        return result

    def _finish(self, model: torch.nn.Module, test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, Any]:
        """Write the final weights and a result record (the export step's input)."""
        metrics = accuracy(predict_logits(model, test_x, self.spec.mean, self.spec.std), test_y)
        result = {"recipe": self.recipe.to_dict(), "recipe_path": self.recipe.path, "commit": self.commit,
                  "metrics": metrics, "history": self.state.history,
                  "num_processes": self.accelerator.num_processes}  # fmt: skip
        if self.accelerator.is_main_process:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            tmp = self.run_dir / "final.safetensors.tmp"
            save_file(state, str(tmp), metadata={"format": "pt"})
            tmp.replace(self.run_dir / "final.safetensors")
            # Last: a run killed before it resumes from its state and finishes again (see run_finished).
            write_json_atomically(result, self.run_dir / RESULT_FILE)
        return result
