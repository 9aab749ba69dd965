"""An evaluation request: what ``otr-harness eval`` asks the evaluation process to do, fully resolved.

:func:`build_request` turns the command line's choices (a run directory, checkpoint or Hub name; suites or
ad-hoc tasks; overrides of the eval settings) into an :class:`EvalRequest`, failing fast — before any
process starts or anything heavy loads — on a bad option, an unsafe-code suite without the opt-in or a
missing vLLM interpreter. ``harness.execution.launch.run_eval_request`` saves it as JSON and runs
``python -m harness.execution.worker request FILE`` with the backend's interpreter, which calls
:func:`run_request`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config import ConfigError, EvalConfig, ToyConfig
from harness.config.suites import Suite, adhoc_suite, load_suite
from harness.eval.backends import backend_python, resolve_backend
from harness.eval.entries import check_unsafe_code
from harness.eval.runner import evaluate_suites
from harness.runs.layout import EVAL, RunDir, is_run_dir
from harness.toy import resolve

DEFAULT_OUT = "eval_results"  # output root when the model is not a run directory


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation, resolved: the model to load, the suites and where each one's results go, the eval
    settings, the toy world of the ``@toy`` suites, the resolved backend, and the log of the process."""

    model: str
    suites: list[Suite]
    out_dirs: list[Path]
    eval: EvalConfig
    toy: ToyConfig | None
    backend: str
    log_file: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            # Only the fields the suite sets: an unset entry field inherits the suite's defaults again.
            "suites": [s.model_dump(exclude_unset=True) for s in self.suites],
            "out_dirs": [str(p) for p in self.out_dirs],
            "eval": self.eval.model_dump(mode="json"),
            "toy": self.toy.model_dump(mode="json") if self.toy else None,
            "backend": self.backend,
            "log_file": str(self.log_file),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRequest:
        return cls(
            model=data["model"],
            suites=[Suite.model_validate(s) for s in data["suites"]],
            out_dirs=[Path(p) for p in data["out_dirs"]],
            eval=EvalConfig.model_validate(data["eval"]),
            toy=ToyConfig.model_validate(data["toy"]) if data.get("toy") else None,
            backend=data["backend"],
            log_file=Path(data["log_file"]),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> EvalRequest:
        return cls.from_json(json.loads(Path(path).read_text()))


def build_request(
    target: str,
    *,
    suites: list[str] | None = None,
    tasks: str | None = None,
    include_path: str | None = None,
    metric: str | None = None,
    backend: str | None = None,
    allow_unsafe_code: bool = False,
    limit: int | None = None,
    batch_size: int | None = None,
    no_cache: bool = False,
    toy_preset: str = "demo",
    out: str | None = None,
) -> EvalRequest:
    """The request of ``otr-harness eval TARGET ...`` (the arguments are its options; None = not given).

    ``target`` is a run directory (its final model, or its base model when it does not train; its toy
    world and eval settings; results under its eval directory), or a model directory, Hub name or
    ``toy:base`` (the ``toy_preset`` world; results under ``eval_results``). ``tasks`` is a comma-separated
    list of lm-eval tasks evaluated as the ad-hoc suite ``tasks``. Raises ConfigError, before anything
    is loaded, for a bad option, a missing model directory, an unsafe-code suite without
    ``allow_unsafe_code`` or a vllm backend without a vLLM interpreter. May build the toy world.
    """
    toy = ToyConfig.preset(toy_preset)
    base_eval = EvalConfig()
    if is_run_dir(Path(target)):  # a run directory: its final model, toy world and eval settings
        run = RunDir(target)
        cfg = run.read_config()
        toy = cfg.toy or toy
        base_eval = cfg.eval
        model_ref = str(run.final_model) if cfg.is_training else cfg.model
        out_root = Path(out) if out else run.eval_root
    else:
        model_ref = target
        out_root = Path(out or DEFAULT_OUT)
    cfg_eval = _override(
        base_eval,
        limit=limit,
        batch_size=batch_size,
        backend=backend,
        allow_unsafe_code=True if allow_unsafe_code else None,
        cache=False if no_cache else None,
    )
    if include_path and not tasks:
        raise ConfigError("--include-path: give the tasks to evaluate from it with --tasks a,b")
    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path: not a directory: {include_path}")
    if model_ref.startswith(("/", ".", "~")) and not Path(model_ref).expanduser().exists():
        raise ConfigError(
            f"{model_ref}: no such model directory (give a checkpoint, run directory or Hub name)"
        )
    chosen = [load_suite(n) for n in (suites or ([] if tasks else base_eval.suites))]
    if tasks:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        chosen.append(adhoc_suite(names, include_path, metric))
    check_unsafe_code(chosen, cfg_eval)  # fail fast, before starting the evaluation process
    resolved = resolve_backend(cfg_eval.backend)
    backend_python(resolved)  # a missing vLLM venv is reported here, with how to create it
    return EvalRequest(
        model=resolve(model_ref, toy),  # only now: may build the toy world (minutes the first time)
        suites=chosen,
        out_dirs=[(out_root / s.name).resolve() for s in chosen],
        eval=cfg_eval,
        toy=toy,
        backend=resolved,
        log_file=RunDir(out_root).log_file(EVAL),
    )


def _override(base: EvalConfig, **overrides: Any) -> EvalConfig:
    """``base`` with the given (not None) fields replaced, validated; ConfigError naming the option."""
    try:
        return EvalConfig.model_validate(
            {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def run_request(request: EvalRequest) -> list[dict[str, Any]]:
    """Evaluate as ``request`` says (in this interpreter, which must run its backend); the results dicts."""
    return evaluate_suites(
        request.model, request.suites, request.out_dirs, request.eval, request.toy, backend=request.backend
    )
