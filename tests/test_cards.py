"""Model cards are generated, never hand-edited: the committed ones equal their rendering."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from zoo.cards import METHOD_SECTIONS, method_text, rerender_cards
from zoo.registry import CARD_NAME, HF_ORG, load_manifest, models_dir

HUB_RELATIONS = {"adapter", "merge", "quantized", "finetune"}  # the base_model_relation values the Hub knows


def test_committed_cards_equal_their_rendering() -> None:
    assert rerender_cards(check=True) == [], "run `zoo cards` and commit models/*/README.md"


def test_every_released_method_has_complete_card_text() -> None:
    for entry in load_manifest().values():
        assert set(METHOD_SECTIONS) <= set(method_text(entry["compression"]["method"]))


@pytest.mark.parametrize("folder", sorted(p.name for p in models_dir().iterdir() if (p / "config.json").is_file()))
def test_every_derived_card_names_its_parent_and_relation(folder: str) -> None:
    """A compressed or fine-tuned checkpoint's card front matter names its parent (a released id, or the recorded
    dense reference of an unreleased one) as a Hub repo id, and the relation; a model from scratch names none."""
    comp = json.loads((models_dir() / folder / "config.json").read_text())["zoo"]["compression"]
    card = ModelCard.load(models_dir() / folder / CARD_NAME).data
    relation = getattr(card, "base_model_relation", None)
    if comp["method"] == "dense" and not comp.get("finetuned_from"):
        assert card.base_model is None and relation is None
        return
    reference = (comp.get("dense_reference") or {}).get("id")
    parent = comp.get("finetuned_from") or comp.get("dense_parent") or reference
    assert parent in load_manifest() or parent == reference, f"{parent}: neither released nor recorded"
    assert card.base_model == f"{HF_ORG}/{parent}"
    if comp.get("finetuned_from"):
        assert relation == "finetune"
    elif comp["weight_bits"] == 1:
        assert relation == "quantized" and "binary" in card.tags
    else:
        assert relation == "finetune" and "pruned" in card.tags
    assert relation in HUB_RELATIONS
