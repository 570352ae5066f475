"""Where a model came from: the git commit of the project and of medops itself, and what
started its run (the model repository's commit, the container image's digest)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import medops
from medops.config.agent import CodeChangedTrigger
from medops.errors import ConfigError
from medops.storage import EventKind, StateStore, local_path


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


def branch_head(folder: Path, branch: str) -> str | None:
    """The commit at the head of ``branch`` in the repository at ``folder``, if readable."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--verify", "--quiet",
                              f"refs/heads/{branch}^{{commit}}"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def lineage(project_root: Path) -> dict[str, str]:
    return {
        "git_commit": git_commit(project_root),
        "medops_version": medops.__version__,
        "medops_commit": git_commit(Path(medops.__file__).parent),
    }


def trigger_lineage(state: StateStore, run_id: str, triggers: Sequence[Any],
                    project_root: Path) -> dict[str, str]:
    """The commit and image behind run ``run_id``, from the events it claimed (the newest of
    each kind: coalesced events are older states of the same branch or repository).

    ``code_commit``/``code_repo``/``code_branch``: the watched branch's commit that started or
    joined the run; a run started otherwise, in a project that watches a branch, records that
    branch's head when it registers. ``image_digest``/``image_repository``/``image_tag``: the
    pushed image behind the run."""
    out: dict[str, str] = {}
    code = [e for e in state.events.events_of_run(run_id, EventKind.CODE_CHANGED)
            if not e.payload.get("baseline")]
    if code:
        p = code[0].payload
        out.update(code_commit=str(p.get("commit")), code_repo=str(p.get("repo")),
                   code_branch=str(p.get("branch")))
    else:
        watched = next((t for t in triggers if isinstance(t, CodeChangedTrigger)), None)
        if watched is not None:
            try:
                folder = local_path(project_root, watched.repo, key="repo")
            except ConfigError:
                folder = None
            head = branch_head(folder, watched.branch) if folder is not None else None
            if head is not None:
                out.update(code_commit=head, code_repo=watched.repo, code_branch=watched.branch)
    image = state.events.events_of_run(run_id, EventKind.IMAGE_PUSHED)
    if image:
        p = image[0].payload
        out.update({f"image_{k}": str(p[k]) for k in ("digest", "repository", "tag")
                    if p.get(k)})
    return out

