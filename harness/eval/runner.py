"""Evaluate a checkpoint on suites with lm-evaluation-harness; write results into the run directory.

A suite (``evaluation/suites/<name>.yaml``, schema in :mod:`harness.config.suites`) lists lm-eval tasks
(or groups) with the metadata the report needs (domain, split, primary metric) and the generation
settings of each entry (chat template, few-shot, temperature, samples per question for Avg@k, max new
tokens). Unset fields keep the lm-eval task's own values (its YAML), so a task evaluated with no settings
is exactly lm-eval's task.

``include_path: "@toy"`` means the task YAMLs rendered for the run's toy world (they carry absolute data
paths); any other value is a directory of the user's own lm-eval tasks (relative: to ``evaluation/``).

How the numbers are produced (nothing here re-scores anything: every value is lm-eval's):
- one lm-eval model object (``hf`` or ``vllm``, :mod:`harness.eval.backends`) is created for the whole
  call and only if some entry is not in the cache (:mod:`harness.eval.cache`); ``lm_eval.simple_evaluate``
  then runs once per (sample index, chat settings) group;
- ``samples: k > 1`` (Avg@k) runs the entry k times with sampling (run i: torch seed 1234 + i for hf,
  request seed i for vllm; otherwise lm-eval's default seeds, as its CLI) and reports the mean of the k
  lm-eval scores (:mod:`harness.eval.results`);
- a task that executes model-generated code (``unsafe_code`` in lm-eval's task config or the suite entry)
  runs only with ``allow_unsafe_code`` (passed as lm-eval's ``confirm_run_unsafe_code``); without it the
  call fails before any model is loaded (:class:`~harness.config.suites.UnsafeCodeError`). With it, the
  sandbox layer is chosen once (``eval.sandbox``, :mod:`harness.eval.sandbox`), keys the cache entries
  of code tasks and is recorded in ``results.json`` (``settings.sandbox`` and per code task).

Output, per suite, in ``eval/<suite>/`` (names from :mod:`harness.runs.layout`), written atomically:
- ``results.json``: per entry the primary metric, value, stderr, n, every metric lm-eval reported, the
  resolved generation settings and the cache key; plus the call's settings (backend, model args, limit,
  versions, each task's resolved lm-eval config);
- ``samples_<task>.jsonl``: lm-eval's per-document logs (doc, target, responses, metrics); with Avg@k the
  first run's, and ``samples_<task>@<i>.jsonl`` for the other runs.

This module runs in the interpreter of the backend; ``harness.execution.launch`` starts it there.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from harness.config import EvalConfig, ToyConfig
from harness.config.suites import Suite
from harness.eval import sandbox
from harness.eval.backends import LazyLM, ModelSetup, require_backend
from harness.eval.cache import EvalCache, canonical_hash, checkpoint_hash, write_samples
from harness.eval.entries import (
    Entry,
    chat_groups,
    check_tasks,
    check_unsafe_code,
    entry_key,
    load_for_run,
    resolve_entries,
    split_shared,
)
from harness.eval.results import entry_record, entry_samples, suite_results
from harness.runs.io import atomic_dir, atomic_write_json
from harness.runs.layout import RESULTS_FILE

log = logging.getLogger(__name__)


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
    check_unsafe_code(suites, cfg)  # fast: before importing lm-eval, indexing or loading any task
    # Where model-written code runs in this process: probed once; ConfigError if bwrap is required but
    # cannot run, one warning if auto falls back to the guard (harness.eval.sandbox).
    layer = sandbox.configure(cfg.sandbox) if cfg.allow_unsafe_code else None
    setup = ModelSetup.create(model_path, require_backend(backend or cfg.backend), cfg)
    by_suite = resolve_entries(suites, toy, cfg)
    entries = [e for suite_entries in by_suite for e in suite_entries]
    checkpoint = checkpoint_hash(model_path) if cfg.cache else None
    check_tasks(entries, cfg, with_hashes=checkpoint is not None)
    cache = EvalCache()
    serve_from_cache(entries, setup, checkpoint, cache, layer)
    todo, copies = split_shared(entries)
    with LazyLM(setup) as lm:
        run_lm_eval(todo, lm, setup)
        record(todo, copies, cache, layer)
    return [
        write_suite(suite, suite_entries, out_dir, setup, checkpoint, started, layer)
        for suite, suite_entries, out_dir in zip(suites, by_suite, out_dirs, strict=True)
    ]


def evaluate(
    model_path: str, suite: Suite, out_dir: Path, cfg: EvalConfig, toy: ToyConfig | None = None
) -> dict[str, Any]:
    """Run one ``suite`` on the model at ``model_path``; write results.json + samples into ``out_dir``."""
    return evaluate_suites(model_path, [suite], [out_dir], cfg, toy)[0]


# ------------------------------------------------------------------------------------------ phases


def executes_code(entry: Entry) -> bool:
    """The entry runs model-written code: flagged in its suite, or (once run) so says a task's config."""
    configs = (entry.record or {}).get("task_configs") or {}
    return entry.spec.unsafe_code or any((c or {}).get("unsafe_code") for c in configs.values())


def serve_from_cache(
    entries: list[Entry],
    setup: ModelSetup,
    checkpoint: str | None,
    cache: EvalCache,
    layer: str | None = None,
) -> None:
    """Key every entry (when caching: ``checkpoint`` is not None) and fill the ones the cache has. The key
    of an entry that executes code includes the sandbox ``layer``: a verdict under one layer is not
    served for another."""
    if checkpoint is None:
        return
    for entry in entries:
        entry.key = entry_key(entry, setup, checkpoint)
        if layer is not None and executes_code(entry):
            entry.key = canonical_hash({"entry": entry.key, "sandbox": layer})
        hit = cache.get(entry.key)
        if hit is not None:
            entry.record, entry.samples = hit
            entry.cache_hit = True
            log.info(
                "%s/%s: from the evaluation cache (%s)", entry.suite.name, entry.spec.task, entry.key[:12]
            )


def run_lm_eval(todo: list[Entry], lm: LazyLM, setup: ModelSetup) -> None:
    """One ``simple_evaluate`` per (sample index, chat settings) group; appends its raw output to the
    ``runs`` of every entry in the group. The model is created by the first call, if there is one."""
    import lm_eval
    from lm_eval.defaults import DEFAULT_OTHER_SEED

    cfg = setup.cfg
    for i in range(max((e.settings.samples for e in todo), default=0)):
        for (chat, multiturn, system, _), group in chat_groups(todo, i).items():
            tasks = [o for e in group for o in load_for_run(e, i, setup.backend)]  # before the model
            raw = lm_eval.simple_evaluate(
                model=lm.get(),
                tasks=tasks,
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


def record(
    todo: list[Entry], copies: list[tuple[Entry, Entry]], cache: EvalCache, layer: str | None = None
) -> None:
    """Records and samples of the entries that ran (shared ones copied from their leader); each stored in
    the cache when it has a key. An entry that executed code records the sandbox ``layer`` it ran in."""
    for e, leader in copies:
        e.runs, e.leaves = leader.runs, leader.leaves
    for e in todo + [e for e, _ in copies]:
        e.record = entry_record(e)
        if layer is not None and executes_code(e):
            e.record["sandbox"] = layer
        e.samples = entry_samples(e)
        if e.key is not None:
            cache.put(e.key, e.record, e.samples)


def write_suite(
    suite: Suite,
    entries: list[Entry],
    out_dir: Path,
    setup: ModelSetup,
    checkpoint: str | None,
    started: float,
    layer: str | None = None,
) -> dict[str, Any]:
    """Write one suite's results and samples into ``out_dir`` atomically (all or nothing); return them.
    ``settings.sandbox`` is ``layer`` when the suite executes code, else None."""
    sandbox_layer = layer if any(executes_code(e) for e in entries) else None
    results = suite_results(suite, entries, setup, checkpoint, time.time() - started, sandbox_layer)
    with atomic_dir(out_dir) as tmp:
        write_samples(tmp, {name: rows for e in entries for name, rows in e.samples.items()})
        atomic_write_json(tmp / RESULTS_FILE, results)
    log.info(
        "%s: %s (%.0f s)",
        suite.name,
        ", ".join(f"{t}={r['value']:.3f}" for t, r in results["tasks"].items()),
        results["eval_time_s"],
    )
    return results
