"""Where the repository, its caches (``.cache/``) and its run directories (``.run/``) are."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package lives in (the folder holding ``deploy/kafka/pom.xml``).

    ``MA_REPO_ROOT`` overrides it. The package is installed editable from the workspace, so the
    source file's own location is tried first, then the current directory and its parents.
    """
    override = os.environ.get("MA_REPO_ROOT")
    if override:
        return Path(override).resolve()
    candidates = [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for start in candidates:
        for folder in (start, *start.parents):
            if (folder / "deploy" / "kafka" / "pom.xml").is_file():
                return folder
    raise RuntimeError("devstack: cannot find the repository root (no deploy/kafka/pom.xml above here)")


def cache_dir() -> Path:
    """Downloads and installed tools, kept between runs (``<repo>/.cache``, ignored by git)."""
    return repo_root() / ".cache"


def run_root() -> Path:
    """Runtime state of local stacks (``<repo>/.run``, ignored by git)."""
    return repo_root() / ".run"
