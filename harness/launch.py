"""How a stage of a run is launched: the command line of its subprocess.

The sweep (any executor) runs every stage as ``<command> STAGE RUN_DIR`` in a fresh process with its own
log. This module decides *which* command: plain ``python -m harness.worker`` by default; the training
and evaluation stages may swap in another launcher (``accelerate launch`` for multi-process training, a
separate interpreter for the vLLM backend) without the executors knowing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.config import RunConfig


def worker_command(stage: str, run_dir: str | Path, python: str | None = None) -> list[str]:
    """``python -m harness.worker STAGE RUN_DIR`` with the given (default: this) interpreter."""
    return [python or sys.executable, "-m", "harness.worker", stage, str(run_dir)]


def train_command(run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """Command of the training stage."""
    return worker_command("train", run_dir)


def eval_command(run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """Command of the evaluation stage."""
    return worker_command("eval", run_dir)


def stage_command(stage: str, run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """The argv that runs ``stage`` ("train" or "eval") of the run in ``run_dir``."""
    if stage == "train":
        return train_command(run_dir, cfg)
    if stage == "eval":
        return eval_command(run_dir, cfg)
    raise ValueError(f"unknown stage '{stage}' (valid: train, eval)")
