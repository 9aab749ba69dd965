"""How the subprocesses of the harness are launched: their command lines, all of ``harness.execution.worker``.

The sweep (any executor) runs every stage as ``<command> STAGE RUN_DIR`` in a fresh process with its own
log. This module decides *which* command: plain ``python -m harness.execution.worker`` by default; the
training and evaluation stages may swap in another launcher (``accelerate launch`` for multi-process
training, a separate interpreter for the vLLM backend) without the executors knowing.

``otr-harness eval`` runs its evaluation the same way, in its own process with the backend's interpreter
(:func:`run_eval_request`): vLLM holds its memory until the process exits, and the vllm backend needs
its own venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.config import ConfigError, RunConfig
from harness.eval.backends import backend_python, resolve_backend
from harness.eval.request import EvalRequest

WORKER = "harness.execution.worker"


def worker_command(stage: str, run_dir: str | Path, python: str | None = None) -> list[str]:
    """``python -m harness.execution.worker STAGE RUN_DIR`` with the given (default: this) interpreter."""
    return [python or sys.executable, "-m", WORKER, stage, str(run_dir)]


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
    return [*launch, *cfg.launcher.extra_args, "-m", WORKER, "train", str(run_dir)]


def eval_command(run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """Command of the evaluation stage: the worker with the interpreter of the resolved backend.

    ``eval.backend: auto`` is resolved here, where the stage is launched (vllm when CUDA and a vLLM
    interpreter are available, else hf), and passed on as ``--backend``. vllm runs under the vLLM venv's
    python (``make vllm`` / ``$OTR_HARNESS_VLLM_PYTHON``); if there is none, the worker runs under this
    interpreter and fails the stage with the message saying how to create it.
    """
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


def request_command(request_file: str | Path, python: str | None = None) -> list[str]:
    """``python -m harness.execution.worker request REQUEST.json`` with the given (default: this) interpreter."""
    return [python or sys.executable, "-m", WORKER, "request", str(request_file)]


def run_eval_request(request: EvalRequest) -> int:
    """Run ``request`` in the worker under its backend's interpreter; the process's output goes to the
    terminal and is appended to ``request.log_file``. Returns its exit code (2 for a configuration error)."""
    python = backend_python(request.backend)
    request.log_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="eval-request-", delete=False) as f:
        req_path = Path(f.name)
    try:
        request.save(req_path)
        with request.log_file.open("a") as log:
            log.write(f"\n===== eval started {time.strftime('%Y-%m-%d %H:%M:%S')} ({python}) =====\n")
            log.flush()
            proc = subprocess.Popen(
                request_command(req_path, python),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=os.getcwd(),
            )
            assert proc.stdout is not None
            for line in proc.stdout:  # tee: the log keeps what the terminal showed
                log.write(line)
                log.flush()
                sys.stdout.write(line)
            return proc.wait()
    finally:
        req_path.unlink(missing_ok=True)
