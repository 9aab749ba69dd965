"""From lm-eval's raw output to the harness's records: the primary metric, Avg@k, ``results.json``.

Nothing here re-scores anything: every value is lm-eval's. With ``samples: k > 1`` (Avg@k) an entry's
value is the mean of its k runs' scores — the mean over questions of the fraction of the k samples that
were correct — and its stderr is over questions (of the per-question mean).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from harness.config.suites import Suite
from harness.eval.backends import ModelSetup
from harness.eval.cache import Samples, stable
from harness.eval.entries import Entry


def primary(metrics: dict[str, Any], name: str, filt: str | None) -> tuple[str, float, float | None]:
    """(key, value, stderr) of ``name,<filter>`` (the given filter, else the first) in lm-eval's per-task
    metrics; an empty ``name`` picks the first metric. KeyError if there is none."""
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


def avg_stderr(samples: list[list[dict[str, Any]]], metric: str, filt: str) -> float | None:
    """Stderr over questions of the per-question mean score across the k runs (Avg@k); None for < 2
    questions."""
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


def entry_record(entry: Entry) -> dict[str, Any]:
    """The results.json record of an entry from its k raw lm-eval outputs (``entry.runs``)."""
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
        key, value, stderr = primary(metrics, spec.metric, spec.filter)
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
        "task_configs": {t: stable(entry.runs[0].get("configs", {}).get(t)) for t in entry.leaves},
        "higher_is_better": entry.runs[0].get("higher_is_better", {}).get(spec.task),
    }
    if k > 1:
        metric, _, filt = key.partition(",")
        record["metric"] = f"{key} (avg@{k})"
        record["runs"] = values
        record["stderr"] = (
            avg_stderr([r["samples"].get(entry.leaves[0], []) for r in entry.runs], metric, filt)
            if len(entry.leaves) == 1
            else None  # a group's Avg@k stderr would pool its tasks; left to the per-run stderrs
        )
        record["run_stderrs"] = [primary(r["results"][spec.task], metric, filt)[2] for r in entry.runs]
    return record


def entry_samples(entry: Entry) -> Samples:
    """lm-eval's per-document logs of each leaf task, by (task, run index)."""
    out: Samples = {}
    for i, raw in enumerate(entry.runs):
        for t in entry.leaves:
            out[t, i] = raw["samples"].get(t, [])
    return out


def suite_results(
    suite: Suite,
    entries: list[Entry],
    setup: ModelSetup,
    checkpoint: str | None,
    elapsed_s: float,
    sandbox: str | None = None,
) -> dict[str, Any]:
    """A suite's ``results.json``: per entry its record (without the task configs, which go into the
    settings), whether it came from the cache and its key; plus the call's settings, ``sandbox`` among
    them (the layer model-written code ran in: ``bwrap`` / ``guard``; None when the suite runs none)."""
    cfg = setup.cfg
    task_configs = {t: c for e in entries for t, c in (e.record or {}).get("task_configs", {}).items()}
    return {
        "suite": suite.name,
        "model": setup.model,
        "checkpoint_hash": checkpoint,
        "tasks": {
            e.spec.task: {
                **{k: v for k, v in (e.record or {}).items() if k != "task_configs"},
                "cache_hit": e.cache_hit,
                "cache_key": e.key,
            }
            for e in entries
        },
        "settings": {
            "backend": setup.backend,
            "model_args": setup.model_args,
            "device": setup.device,
            "limit": cfg.limit,
            "batch_size": cfg.batch_size,
            "allow_unsafe_code": cfg.allow_unsafe_code,
            "sandbox": sandbox,
            "versions": setup.versions,
            "lm_eval_version": setup.versions["lm_eval"],
            "task_configs": task_configs,
        },
        "eval_time_s": elapsed_s,
    }


def result_lines(results: dict[str, Any]) -> list[str]:
    """One line per entry of a suite's results, as ``otr-harness eval`` prints them:
    ``<suite>/<task>: <metric> = <value> ± <stderr> (n=<n>) [cached]``."""
    lines = []
    for task, r in results["tasks"].items():
        err = f" ± {r['stderr']:.4f}" if r.get("stderr") is not None else ""
        cached = " [cached]" if r.get("cache_hit") else ""
        lines.append(f"{results['suite']}/{task}: {r['metric']} = {r['value']:.4f}{err} (n={r['n']}){cached}")
    return lines
