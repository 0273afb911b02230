"""Model cards are generated, never hand-edited: the committed ones equal their rendering."""

from __future__ import annotations

from zoo.cards import METHOD_SECTIONS, method_text, rerender_cards
from zoo.registry import load_manifest


def test_committed_cards_equal_their_rendering() -> None:
    assert rerender_cards(check=True) == [], "run `zoo cards` and commit models/*/README.md"


def test_every_released_method_has_complete_card_text() -> None:
    for entry in load_manifest().values():
        assert set(METHOD_SECTIONS) <= set(method_text(entry["compression"]["method"]))
