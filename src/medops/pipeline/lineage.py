"""Where a model came from: the git commit of the project and of medops itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import medops


def git_commit(folder: Path) -> str:
    """The commit checked out at ``folder`` (``+dirty`` when there are local changes)."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def lineage(project_root: Path) -> dict[str, str]:
    return {
        "git_commit": git_commit(project_root),
        "medops_version": medops.__version__,
        "medops_commit": git_commit(Path(medops.__file__).parent),
    }
