"""Where the harness finds its own files and where it caches what it builds.

Files outside the ``harness`` package (``sweeps/``, ``evaluation/``) are resolved from the repository
root: the harness is meant to be used from a clone with an editable install (``pip install -e .``), as
research harnesses usually are. ``OTR_HARNESS_ROOT`` overrides the root (e.g. for a non-editable install
next to a checkout), ``OTR_HARNESS_CACHE`` the cache.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The repository root: ``$OTR_HARNESS_ROOT`` or the parent of the ``harness`` package."""
    env = os.environ.get("OTR_HARNESS_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def evaluation_dir() -> Path:
    """``evaluation/`` (suite definitions and lm-eval task YAMLs)."""
    return repo_root() / "evaluation"


def cache_dir() -> Path:
    """Cache for built artefacts (toy worlds, evaluation cache): ``$OTR_HARNESS_CACHE`` or ``<root>/.cache``.

    Everything below it is keyed by a content hash, so it is safe to share between sweeps and to delete.
    """
    env = os.environ.get("OTR_HARNESS_CACHE")
    path = Path(env) if env else repo_root() / ".cache"
    return path.resolve()
