"""What produced a run (``env.json``): git SHA and dirtiness, package versions, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from harness.paths import repo_root

PACKAGES = ("otr-harness", "torch", "transformers", "datasets", "lm_eval", "accelerate", "vllm", "trl")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo_root()), *args], capture_output=True, text=True, timeout=10
    ).stdout.strip()


def environment() -> dict[str, Any]:
    """git SHA (None outside a checkout), whether tracked files differ from it, versions, CPUs and GPUs."""
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    env: dict[str, Any] = {
        "git_sha": sha or None,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {p: _version(p) for p in PACKAGES},
    }
    try:  # only when a stage is about to run (seconds anyway); planning never calls this
        import torch

        env["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return env
