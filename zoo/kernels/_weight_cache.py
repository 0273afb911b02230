"""A cache of data derived from packed weights, per weight tensor, dropped when the tensor dies or is edited."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch


class DerivedWeightCache:
    """``get(packed, extra_key, build)`` returns ``build()`` computed once per (tensor object, extra_key).

    Entries die with their tensor (weak reference) and are rebuilt after an in-place edit (version counter).
    Inference tensors (made under ``torch.inference_mode``) have no version counter, so they are never cached.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, Hashable], tuple[weakref.ref, int, Any]] = {}

    def get(self, packed: torch.Tensor, extra_key: Hashable, build: Callable[[], Any]) -> Any:
        if packed.is_inference():
            return build()
        key = (id(packed), extra_key)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is packed and hit[1] == packed._version:
                return hit[2]
        value = build()

        def drop(ref: weakref.ref, key: tuple[int, Hashable] = key) -> None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0] is ref:
                    del self._entries[key]

        with self._lock:
            self._entries[key] = (weakref.ref(packed, drop), packed._version, value)
        return value
