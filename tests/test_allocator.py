"""zoo.allocator: large tensors reuse freed heap memory instead of faulting in fresh pages each time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_FAULTS_OF_REPEATED_ALLOCATIONS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from zoo.allocator import retain_freed_memory
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False
    for _ in range(2):  # warm-up: 48 MB, above glibc's largest automatic mmap threshold
        torch.empty(12_000_000).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(12_000_000).fill_(1.0)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    run = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_REPEATED_ALLOCATIONS, mode],
        capture_output=True, text=True, check=True, env={**os.environ, **env},
    )  # fmt: skip
    applied, faults = run.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc options")
def test_retained_memory_serves_repeated_large_tensors_without_page_faults() -> None:
    applied, retained = _faults("retain")
    _, default = _faults("default")
    pages = 20 * 48_000_000 // 4096
    assert applied
    assert default > pages / 2, "glibc's defaults no longer map large tensors afresh: the setting has no purpose"
    assert retained < pages / 10  # at most about two of the twenty allocations fault their pages in


def test_the_setting_can_be_switched_off() -> None:
    applied, _ = _faults("retain", ZOO_RETAIN_FREED_MEMORY="0")
    assert not applied
