"""Validation of per-layer width arguments (the constructor arguments a channel-pruned shape rebuilds from)."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence


def check_widths(name: str, widths: Iterable[int] | None, default: Sequence[int], what: str) -> list[int]:
    """``widths`` as a list of positive ints, one per entry of ``default`` (``default`` itself when None).

    ``name`` is the argument's name and ``what`` says what one entry is (e.g. "one per conv of VGG-16"): both go
    into the ``ValueError`` for a wrong count, a zero or negative width, or a non-integer (``True``, ``3.5``, "64").
    """
    count = len(default)
    if widths is None:
        return [int(w) for w in default]
    expected = f"{name} must be {count} positive integers ({what})"
    if isinstance(widths, (str, bytes)):
        raise ValueError(f"{expected}, got the string {widths!r}")
    try:
        values = list(widths)
    except TypeError:
        raise ValueError(f"{expected}, got {widths!r}") from None
    checked = []
    for i, w in enumerate(values):
        try:
            if isinstance(w, bool):
                raise TypeError
            checked.append(operator.index(w))
        except TypeError:
            raise ValueError(f"{expected}; entry {i} is {w!r}, not an integer") from None
    if len(checked) != count:
        raise ValueError(f"{expected}, got {len(checked)}: {checked}")
    bad = [(i, w) for i, w in enumerate(checked) if w < 1]
    if bad:
        i, w = bad[0]
        raise ValueError(f"{expected}; entry {i} is {w} (every layer keeps at least one channel), got {checked}")
    return checked
