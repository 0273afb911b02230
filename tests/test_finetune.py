"""Fine-tuning a released checkpoint on the 5,000 real MNIST digits, against training from scratch."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import released_ids

import zoo
from training.finetune import finetune
from zoo.registry import load_manifest


@pytest.mark.slow
def test_finetune_writes_a_checkpoint_that_records_its_parent_and_scratch_baseline(tmp_path):
    source = released_ids()[0]
    manifest_before = dict(load_manifest())
    config = finetune(source, "mnist_5k", 10, new_id="tiny.mnist5k", epochs=1, runs_dir=tmp_path / "runs",
                      models_dir=tmp_path / "models", recipes_dir=tmp_path)  # fmt: skip
    folder = tmp_path / "models" / "tiny.mnist5k"
    assert json.loads((folder / "config.json").read_text()) == config
    assert config["architecture"] == load_manifest()[source]["architecture"]
    assert config["zoo"]["compression"]["finetuned_from"] == source
    metrics = config["zoo"]["metrics"]
    assert metrics["dataset"] == "mnist_5k" and metrics["num_samples"] == 1000
    assert 0 <= metrics["scratch_top1"] <= 100 and metrics["top1"] > 50  # one epoch from a real checkpoint
    card = (folder / "README.md").read_text()
    assert f"base_model: compressed-cnn-zoo/{source}" in card and "trained from scratch" in card
    model = zoo.from_pretrained(f"local-dir:{folder}")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert load_manifest() == manifest_before  # exporting outside models/ leaves the package manifest alone
    assert (tmp_path / "tiny.mnist5k.yaml").is_file()


def test_finetune_refuses_a_class_count_that_does_not_match_the_dataset(tmp_path):
    with pytest.raises(zoo.errors.DataError, match="does not match mnist_5k"):
        finetune(released_ids()[0], "mnist_5k", 7, runs_dir=tmp_path)
