"""Keep freed tensor memory in the process (glibc malloc) instead of mapping fresh pages for every large tensor.

glibc serves allocations above its mmap threshold (at most 32 MiB, adjusted as the program runs) with a new
mapping, which the kernel fills with zeroed pages on first touch, and hands freed memory at the heap's top back to
the kernel. A CPU forward pass over a large batch allocates and frees activations of that size in every layer, so
it keeps paying page faults; under a hypervisor they are dear. Measured on a 2-core KVM guest (AMD EPYC Zen 3): the
whole-test-split check of a released BNN (tests/test_inference.py) 42.5 s -> 29.4 s, its system time 15 s ->
1.5 s; training steps (smaller tensors, reused by glibc already) unchanged.

The price: the process keeps its peak heap instead of returning it between batches. ``ZOO_RETAIN_FREED_MEMORY=0``
keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# glibc's mallopt parameter numbers and the settings made.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
HEAP_UP_TO = 1 << 30  # allocations up to 1 GiB come from the heap
TRIM_ABOVE = 1 << 31  # free heap top returned to the kernel only beyond 2 GiB
TOP_PAD = 1 << 28  # the heap grows in steps of 256 MiB
_SETTINGS = ((_M_MMAP_THRESHOLD, HEAP_UP_TO), (_M_TRIM_THRESHOLD, TRIM_ABOVE), (_M_TOP_PAD, TOP_PAD))
DISABLE_ENV = "ZOO_RETAIN_FREED_MEMORY"


@functools.cache
def retain_freed_memory() -> bool:
    """Serve allocations up to ``HEAP_UP_TO`` from the heap and keep freed memory for reuse (see the module
    docstring). Returns True when applied: on Linux with glibc, unless ``ZOO_RETAIN_FREED_MEMORY=0``. Idempotent."""
    if not sys.platform.startswith("linux") or os.environ.get(DISABLE_ENV, "1").strip().lower() in {"0", "false"}:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # no glibc (musl has no libc.so.6 of this name)
        return False
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
