"""Where a result came from: the code commit recorded beside trained weights and re-measured speeds."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """The commit the code ran from, with ``-dirty`` when the work tree had changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "zoo", "training"], cwd=root,
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
