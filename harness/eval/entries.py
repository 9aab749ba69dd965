"""Suite entries as lm-eval sees them: task managers, the checks made before any model is loaded, each
entry's cache key, and the fresh task objects of one evaluation run.

An :class:`Entry` is one task (or group) of one suite with its resolved generation settings; it collects,
as the evaluation proceeds, its cache key, lm-eval's raw output per run, its record and its samples.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, EvalConfig, ToyConfig
from harness.config.suites import GenerationSettings, Suite, SuiteTask, UnsafeCodeError
from harness.eval.backends import ModelSetup
from harness.eval.cache import Samples, canonical_hash, task_hash
from harness.paths import evaluation_dir
from harness.toy import build as build_toy

log = logging.getLogger(__name__)

# Bump when the seeding of sampled runs changes: every cached result was produced with the old seeds.
SEEDS_VERSION = "v2"


@dataclass
class Entry:
    """One suite entry, from resolution to its record."""

    suite: Suite
    spec: SuiteTask
    settings: GenerationSettings
    task_manager: Any  # lm_eval.tasks.TaskManager, shared by the suites with the same task index
    task_hashes: dict[str, str] = field(default_factory=dict)  # lm-eval task name -> task_hash
    leaves: list[str] = field(default_factory=list)  # the lm-eval tasks it runs (a group's members)
    key: str | None = None  # cache key; None when caching is off
    record: dict[str, Any] | None = None
    samples: Samples = field(default_factory=dict)
    cache_hit: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)  # raw lm-eval output per sample index


# ------------------------------------------------------------------------------------------ checks


def check_unsafe_code(suites: list[Suite], cfg: EvalConfig) -> None:
    """UnsafeCodeError if a suite entry flagged ``unsafe_code`` would run without the opt-in. Reads only
    the suite files: fast enough to call before starting any process or importing lm-eval."""
    for suite in suites:
        for entry in suite.tasks:
            if entry.unsafe_code and not cfg.allow_unsafe_code:
                raise UnsafeCodeError(unsafe_message(suite.name, entry.task))


def unsafe_message(suite: str, task: str) -> str:
    return (
        f"suite '{suite}': task '{task}' executes model-generated code, which is off by default; enable it "
        "with `eval: {allow_unsafe_code: true}` in the run/sweep config or `otr-harness eval "
        "--allow-unsafe-code` (the toy code tasks run it in harness/eval/sandbox.py; lm-eval's own code "
        "tasks run it unsandboxed — use a container)"
    )


def check_tasks(entries: list[Entry], cfg: EvalConfig, with_hashes: bool) -> None:
    """Load each entry's lm-eval tasks once (no model): refuse ``unsafe_code`` tasks without the opt-in
    (lm-eval's own flag, which the suite may not repeat) and Avg@k on a greedy task; with ``with_hashes``
    store each task's :func:`~harness.eval.cache.task_hash` for the cache key."""
    for entry in entries:
        tasks = entry.task_manager.load([entry.spec.task])["tasks"]
        for name, task in tasks.items():
            if task.get_config("unsafe_code") and not cfg.allow_unsafe_code:
                raise UnsafeCodeError(unsafe_message(entry.suite.name, f"{entry.spec.task}/{name}"))
            if entry.settings.samples > 1 and task.get_config("output_type") == "generate_until":
                gk = {**task.get_config("generation_kwargs"), **entry.settings.generation_kwargs()}
                if not gk.get("do_sample"):
                    raise ConfigError(
                        f"suite '{entry.suite.name}': task '{name}': samples: {entry.settings.samples} "
                        "but the task decodes greedily; set temperature > 0 in the suite entry"
                    )
        if with_hashes:
            entry.task_hashes = {name: task_hash(task) for name, task in sorted(tasks.items())}


# -------------------------------------------------------------------------------------- resolution


def include_path(suite: Suite, toy: ToyConfig | None) -> str | None:
    """The directory of the suite's own task YAMLs: ``@toy`` = the run's toy world (built if needed);
    a relative path is under ``evaluation/``."""
    if suite.include_path == "@toy":
        return str(build_toy(toy or ToyConfig()).tasks_dir)
    if suite.include_path is None:
        return None
    path = Path(suite.include_path)
    return str(path if path.is_absolute() else evaluation_dir() / path)


def resolve_entries(suites: list[Suite], toy: ToyConfig | None) -> list[list[Entry]]:
    """The entries of each suite, with their settings and a task manager per distinct task index
    (building an index takes seconds: suites that share one share it). ConfigError for a task that is
    not in its index."""
    from lm_eval.tasks import TaskManager

    managers: dict[tuple[str | None, bool], Any] = {}
    by_suite: list[list[Entry]] = []
    for suite in suites:
        include = include_path(suite, toy)
        tm_key = (include, suite.builtin_tasks)
        if tm_key not in managers:
            managers[tm_key] = TaskManager(include_path=include, include_defaults=suite.builtin_tasks)
        tm = managers[tm_key]
        entries = []
        for spec in suite.tasks:
            if spec.task not in tm.task_index:
                raise ConfigError(
                    f"suite '{suite.name}': task '{spec.task}' is not in lm-eval's index"
                    + (f" (include_path {include})" if include else "")
                    + "; check the name with `lm-eval ls tasks` or pass --include-path"
                )
            entries.append(Entry(suite, spec, spec.settings(suite.defaults), tm))
        by_suite.append(entries)
    return by_suite


def entry_key(entry: Entry, setup: ModelSetup, checkpoint: str) -> str:
    """The cache key of an entry: a hash of everything that decides its numbers (see harness.eval.cache)."""
    cfg = setup.cfg
    return canonical_hash(
        {
            "checkpoint": checkpoint,
            "tasks": entry.task_hashes,
            "entry": entry.spec.task,
            "settings": entry.settings.model_dump(),
            "backend": setup.backend,
            "lm_args": {k: v for k, v in setup.model_args.items() if k != "pretrained"},
            "batch_size": cfg.batch_size,
            "device": setup.device,
            "limit": cfg.limit,
            "versions": setup.versions,
            "seeds": SEEDS_VERSION,
        }
    )


# ----------------------------------------------------------------------------------------- running


def split_shared(entries: list[Entry]) -> tuple[list[Entry], list[tuple[Entry, Entry]]]:
    """(entries to run, (copy, leader) pairs): an uncached entry that two suites share (same task,
    settings and task index, as ``paper`` and ``math`` do) runs once, for its first suite."""
    leaders: dict[Any, Entry] = {}
    copies: list[tuple[Entry, Entry]] = []
    todo: list[Entry] = []
    for e in entries:
        if e.cache_hit:
            continue
        ident = (e.spec.task, e.settings.model_dump_json(), id(e.task_manager))
        if ident in leaders:
            copies.append((e, leaders[ident]))
        else:
            leaders[ident] = e
            todo.append(e)
    return todo, copies


def chat_groups(entries: list[Entry], run_index: int) -> dict[tuple[Any, ...], list[Entry]]:
    """The entries with a run ``run_index``, grouped by what ``simple_evaluate`` takes once per call:
    (apply_chat_template, fewshot_as_multiturn, system_instruction, task manager id)."""
    groups: dict[tuple[Any, ...], list[Entry]] = defaultdict(list)
    for e in entries:
        if e.settings.samples > run_index:
            s = e.settings
            multiturn = s.apply_chat_template if s.fewshot_as_multiturn is None else s.fewshot_as_multiturn
            groups[(s.apply_chat_template, multiturn, s.system_instruction, id(e.task_manager))].append(e)
    return groups


def load_for_run(entry: Entry, run_index: int, backend: str) -> list[Any]:
    """Fresh lm-eval task objects for one run of an entry with its settings applied; returns what to pass
    to simple_evaluate (the group, or the task(s)) and records the entry's leaf tasks."""
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
