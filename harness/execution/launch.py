"""How a stage of a run is launched: the command line of its subprocess.

The sweep (any executor) runs every stage as ``<command> STAGE RUN_DIR`` in a fresh process with its own
log. This module decides *which* command: plain ``python -m harness.execution.worker`` by default; the training
and evaluation stages may swap in another launcher (``accelerate launch`` for multi-process training, a
separate interpreter for the vLLM backend) without the executors knowing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.config import RunConfig


def worker_command(stage: str, run_dir: str | Path, python: str | None = None) -> list[str]:
    """``python -m harness.execution.worker STAGE RUN_DIR`` with the given (default: this) interpreter."""
    return [python or sys.executable, "-m", "harness.execution.worker", stage, str(run_dir)]


def train_command(run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """Command of the training stage: the worker, under ``accelerate launch`` when ``cfg.launcher`` is set.

    ``accelerate launch`` runs as ``python -m accelerate.commands.launch`` with this interpreter, so the
    workers it starts use the same environment whatever is on PATH. The accelerate config file decides
    DDP / FSDP / DeepSpeed; ``num_processes`` and ``main_process_port`` override it.
    """
    if cfg.launcher is None:
        return worker_command("train", run_dir)
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.launcher.accelerate_config is not None:
        launch += ["--config_file", str(Path(cfg.launcher.accelerate_config).resolve())]
    if cfg.launcher.num_processes is not None:
        launch += ["--num_processes", str(cfg.launcher.num_processes)]
    if cfg.launcher.main_process_port is not None:
        launch += ["--main_process_port", str(cfg.launcher.main_process_port)]
    return [*launch, *cfg.launcher.extra_args, "-m", "harness.execution.worker", "train", str(run_dir)]


def eval_command(run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """Command of the evaluation stage: the worker with the interpreter of the resolved backend.

    ``eval.backend: auto`` is resolved here, where the stage is launched (vllm when CUDA and a vLLM
    interpreter are available, else hf), and passed on as ``--backend``. vllm runs under the vLLM venv's
    python (``make vllm`` / ``$OTR_HARNESS_VLLM_PYTHON``); if there is none, the worker runs under this
    interpreter and fails the stage with the message saying how to create it.
    """
    from harness.config import ConfigError
    from harness.eval.runner import backend_python, resolve_backend

    backend = resolve_backend(cfg.eval.backend)
    try:
        python = backend_python(backend)
    except ConfigError:
        python = None  # the worker raises the same error and records it in status/eval.failed
    return [*worker_command("eval", run_dir, python), "--backend", backend]


def stage_command(stage: str, run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """The argv that runs ``stage`` ("train" or "eval") of the run in ``run_dir``."""
    if stage == "train":
        return train_command(run_dir, cfg)
    if stage == "eval":
        return eval_command(run_dir, cfg)
    raise ValueError(f"unknown stage '{stage}' (valid: train, eval)")
