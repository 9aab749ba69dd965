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
from harness.config.task_data import TaskDataLocation
from harness.eval import code_tasks, task_data, task_index
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
    # eval.dataset_overrides: leaf task -> where its documents come from (harness.eval.task_data).
    locations: dict[str, TaskDataLocation] = field(default_factory=dict)
    gen_cap: int | None = None  # eval.max_gen_toks: cap on max new tokens (the entry's or the task's own)


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
        "--allow-unsafe-code` (it runs in harness/eval/sandbox.py, isolated by bubblewrap where available; "
        "lm-eval's own humaneval/mbpp tasks named directly run it unsandboxed: use their *_sandboxed variants)"
    )


def check_tasks(entries: list[Entry], cfg: EvalConfig, with_hashes: bool) -> None:
    """Load each entry's lm-eval tasks once (no model): refuse ``unsafe_code`` tasks without the opt-in
    (lm-eval's own flag, which the suite may not repeat) and Avg@k on a greedy task; with ``with_hashes``
    store each task's :func:`~harness.eval.cache.task_hash` for the cache key."""
    for entry in entries:
        tasks = entry.task_manager.load([entry.spec.task])["tasks"]
        task_data.check_loaded(tasks, entry.locations)
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
            entry.task_hashes = {name: _seeded_hash(task) for name, task in sorted(tasks.items())}


def _seeded_hash(task: Any) -> str:
    """``task_hash`` with Python's RNG seeded as ``simple_evaluate`` seeds it: lm-eval applies a task's
    ``process_docs`` each time its documents are read, and some shuffle (gpqa shuffles every question's
    choices with ``random``): unseeded, the key would differ in every process and never hit the cache."""
    import random

    from lm_eval.defaults import DEFAULT_RANDOM_SEED

    random.seed(DEFAULT_RANDOM_SEED)
    return task_hash(task)


# -------------------------------------------------------------------------------------- resolution


def include_path(suite: Suite, toy: ToyConfig | None) -> str | None:
    """The directory of the suite's own task YAMLs: ``@toy`` = the run's toy world (built if needed);
    ``@code`` = the sandboxed code tasks (:mod:`harness.eval.code_tasks`); a relative path is under
    ``evaluation/``."""
    if suite.include_path == "@toy":
        return str(build_toy(toy or ToyConfig()).tasks_dir)
    if suite.include_path == code_tasks.INCLUDE_PATH:
        return str(code_tasks.tasks_dir())
    if suite.include_path is None:
        return None
    path = Path(suite.include_path)
    return str(path if path.is_absolute() else evaluation_dir() / path)


def resolve_entries(
    suites: list[Suite], toy: ToyConfig | None, cfg: EvalConfig | None = None
) -> list[list[Entry]]:
    """The entries of each suite, with their settings and a task manager per distinct task index
    (building an index takes seconds: suites that share one share it, and its index comes from the cache
    of :mod:`harness.eval.task_index` when lm-eval's files are unchanged). ConfigError for a task that is
    not in its index. From ``cfg``: the caps ``max_samples`` / ``max_gen_toks`` and the tasks' data
    locations (``dataset_overrides``, applied to the index before any task is loaded)."""
    cfg = cfg or EvalConfig()
    managers: dict[tuple[str | None, bool], Any] = {}
    by_suite: list[list[Entry]] = []
    for suite in suites:
        include = include_path(suite, toy)
        tm_key = (include, suite.builtin_tasks)
        if tm_key not in managers:
            managers[tm_key] = task_index.task_manager(include, suite.builtin_tasks)  # index: cached
        tm = managers[tm_key]
        entries = []
        for spec in suite.tasks:
            if spec.task not in tm.task_index:
                raise ConfigError(
                    f"suite '{suite.name}': task '{spec.task}' is not in lm-eval's index"
                    + (f" (include_path {include})" if include else "")
                    + "; check the name with `lm-eval ls tasks` or pass --include-path"
                )
            settings = spec.settings(suite.defaults)
            if cfg.max_samples is not None and settings.samples > cfg.max_samples:
                settings = settings.model_copy(update={"samples": cfg.max_samples})
            entries.append(Entry(suite, spec, settings, tm, gen_cap=cfg.max_gen_toks))
        by_suite.append(entries)
    if cfg.dataset_overrides:
        _apply_locations(by_suite, cfg)
    return by_suite


def _apply_locations(by_suite: list[list[Entry]], cfg: EvalConfig) -> None:
    """Resolve ``dataset_overrides`` per task index (a group's key covers its tasks) and apply them."""
    entries = [e for suite_entries in by_suite for e in suite_entries]
    used: set[str] = set()
    for tm in {id(e.task_manager): e.task_manager for e in entries}.values():
        mine = [e for e in entries if e.task_manager is tm]
        names = list(dict.fromkeys(e.spec.task for e in mine))
        covered = task_data.coverage(tm.task_index, names)
        own = {k: v for k, v in cfg.dataset_overrides.items() if k in covered}  # keys of this index's suites
        used |= set(own)
        locations = task_data.resolve(tm.task_index, own, names)
        task_data.apply(tm, locations)
        for e in mine:
            leaves = task_data.group_members(tm.task_index, e.spec.task)[0]
            e.locations = {leaf: loc for leaf, loc in locations.items() if leaf in leaves}
    unused = sorted(set(cfg.dataset_overrides) - used)
    if unused:  # a typo must not evaluate the Hub's data silently
        raise task_data.unknown_key(unused[0], list(dict.fromkeys(e.spec.task for e in entries)))


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
            # Only when set, so that the keys of every existing cache entry stay what they were.
            **({"gen_cap": entry.gen_cap} if entry.gen_cap is not None else {}),
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
            if entry.gen_cap is not None:  # eval.max_gen_toks; a task that sets none gets lm-eval's default
                from lm_eval.defaults import DEFAULT_MAX_GEN_TOKS

                own = task.get_config("generation_kwargs").get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
                kwargs["max_gen_toks"] = min(kwargs.get("max_gen_toks", own), entry.gen_cap)
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
