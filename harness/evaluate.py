"""Evaluate a checkpoint on a suite with lm-evaluation-harness; write results into the run directory.

A suite (``evaluation/suites/<name>.yaml``) lists lm-eval tasks with the metadata the report needs:
the domain (math / code / reasoning), the split (``id`` in-domain, ``ood`` out-of-distribution) and the
primary metric. ``include_path: "@toy"`` means the task YAMLs rendered for the run's toy world (they carry
absolute data paths); any other value is a directory of the user's own lm-eval tasks.

Output, per suite, in ``eval/<suite>/``:
- ``results.json``: per task the primary metric, its value, stderr, n, and every metric lm-eval reported,
  plus the exact settings of the call (backend, model args, limit, lm-eval version);
- ``samples_<task>.jsonl``: lm-eval's per-document logs (doc, target, responses, metrics).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config import ConfigError, EvalConfig, load_yaml
from harness.paths import evaluation_dir
from harness.rundir import atomic_dir, atomic_write_json
from harness.toy import ToyConfig

log = logging.getLogger(__name__)


class SuiteTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    domain: Literal["math", "code", "reasoning", "other"] = "other"
    # id: in-domain test; ood: out-of-distribution test; val: model selection only (e.g. picking the lr),
    # never reported as a result.
    split: Literal["id", "ood", "val"] = "id"
    metric: str = Field(
        "exact_match", description="primary metric name as lm-eval reports it (before the comma)"
    )


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    include_path: str | None = None
    builtin_tasks: bool = Field(
        True, description="index lm-eval's own tasks too (~15 s); false for suites made only of custom tasks"
    )
    tasks: list[SuiteTask] = Field(min_length=1)


def load_suite(name: str) -> Suite:
    """Load ``evaluation/suites/<name>.yaml`` (or a path to a suite file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else evaluation_dir() / "suites" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (evaluation_dir() / "suites").glob("*.yaml"))
        raise ConfigError(f"eval.suites: unknown suite '{name}' (no {path}); valid: {', '.join(known)}")
    try:
        return Suite.model_validate(load_yaml(path))
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"{path}: field '{'.'.join(map(str, first['loc']))}': {first['msg']}") from None


def _include_path(suite: Suite, toy: ToyConfig | None) -> str | None:
    if suite.include_path == "@toy":
        from harness import toy as toy_world

        return str(toy_world.build(toy or ToyConfig()).tasks_dir)
    if suite.include_path is None:
        return None
    path = Path(suite.include_path)
    return str(path if path.is_absolute() else evaluation_dir() / path)


def _primary(metrics: dict[str, Any], name: str) -> tuple[str, float, float | None]:
    """Pick ``name,<filter>`` (the first filter if several) from lm-eval's per-task metrics."""
    for key, value in metrics.items():
        metric, _, filt = key.partition(",")
        if metric == name and isinstance(value, int | float):
            stderr = metrics.get(f"{name}_stderr,{filt}")
            return key, float(value), float(stderr) if isinstance(stderr, int | float) else None
    raise KeyError(f"metric '{name}' not in lm-eval results {sorted(metrics)}")


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate(
    model_path: str, suite: Suite, out_dir: Path, cfg: EvalConfig, toy: ToyConfig | None = None
) -> dict[str, Any]:
    """Run ``suite`` on the model at ``model_path``; write results.json + samples into ``out_dir`` atomically."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = time.time()
    model_args = {"pretrained": model_path, "dtype": cfg.dtype}
    task_manager = TaskManager(include_path=_include_path(suite, toy), include_defaults=suite.builtin_tasks)
    raw = lm_eval.simple_evaluate(
        model=cfg.backend,
        model_args=model_args,
        device=_device(cfg.device),
        tasks=[t.task for t in suite.tasks],
        task_manager=task_manager,
        batch_size=cfg.batch_size,
        limit=cfg.limit,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    tasks: dict[str, Any] = {}
    for entry in suite.tasks:
        metrics = raw["results"][entry.task]
        key, value, stderr = _primary(metrics, entry.metric)
        tasks[entry.task] = {
            "domain": entry.domain,
            "split": entry.split,
            "metric": key,
            "value": value,
            "stderr": stderr,
            "n": len(raw["samples"][entry.task]),
            "all_metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        }
    results = {
        "suite": suite.name,
        "model": model_path,
        "tasks": tasks,
        "settings": {
            "backend": cfg.backend,
            "model_args": model_args,
            "device": _device(cfg.device),
            "limit": cfg.limit,
            "batch_size": cfg.batch_size,
            "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
            "task_configs": raw.get("configs", {}),
        },
        "eval_time_s": time.time() - started,
    }
    with atomic_dir(out_dir) as tmp:
        for entry in suite.tasks:
            with (tmp / f"samples_{entry.task}.jsonl").open("w") as f:
                for sample in raw["samples"][entry.task]:
                    f.write(json.dumps(sample, default=str) + "\n")
        atomic_write_json(tmp / "results.json", results)
    log.info(
        "%s: %s (%.0f s)",
        suite.name,
        ", ".join(f"{t}={r['value']:.3f}" for t, r in tasks.items()),
        results["eval_time_s"],
    )
    return results
