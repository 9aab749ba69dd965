"""Read a sweep's run directories into tables: the only part of the report that touches run directories.

* ``collect``: the tidy results table (one row per run × task: run id, method, every knob, seed, suite,
  task, domain, split, metric, value, stderr, n) and one row per run with its status;
* ``load_samples``: the per-question scores from lm-eval's ``samples_<task>.jsonl`` (one row per run ×
  task × question), the input of the paired bootstrap;
* ``load_metrics`` / ``load_summaries``: training curves and compute accounting;
* ``example_generations``: a few prompts, targets and responses per method (raw model text: the renderer
  escapes it).

Run directories are read as ``harness.runs.layout`` lays them out; a run that is pending, failed or half
written contributes what it has (or nothing) and is listed by status, never a crash. A file that does not
read back (``harness.runs.integrity``: a results.json cut off, a samples log missing, a summary that is not
JSON) is never averaged around: the run's status is ``corrupt``, that suite contributes no row, and
``collect(..., problems=[...])`` names every such file so that the report can say so first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.config import TRAINING_DEFAULTS
from harness.objectives import validate_params
from harness.runs import integrity
from harness.runs.io import read_jsonl
from harness.runs.layout import EVAL, RESULTS_FILE, RunDir, SweepDir, stages_for

# Columns of the tidy table, in this order; the knob columns (param_*, training_*) go between.
RUN_COLUMNS = ["run_id", "method", "variant", "objective", "seed", "model", "dataset", "learning_rate"]
RESULT_COLUMNS = ["suite", "task", "domain", "split", "metric", "value", "stderr", "n"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _objective_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The objective's parameters with its defaults filled in (so ``k`` is known even when not written)."""
    try:
        return validate_params(name, params).model_dump(by_alias=True)
    except Exception:  # unknown objective (an old run, a test): report what the config says
        return dict(params)


def _default_lr() -> float:
    """The learning rate of a run whose config sets none: the harness's training default."""
    return float(TRAINING_DEFAULTS["learning_rate"])


def run_info(
    run_path: Path, order: int = 0, problems: list[integrity.Problem] | None = None
) -> dict[str, Any]:
    """One run's identity, knobs and status, from its config.yaml, meta.json and status markers.

    ``problems``: its outputs that do not read back (``run_problems``); any makes the status ``corrupt``.
    """
    run = RunDir(run_path)
    try:
        cfg = yaml.safe_load(run.config_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    meta = _read_json(run.meta_file)
    objective = dict(cfg.get("objective") or {})
    is_base = not objective
    name = objective.pop("name", "sft") if objective else "base"
    training = cfg.get("training") or {}
    dataset = cfg.get("dataset") or {}
    variant = str(meta.get("variant", "base" if is_base else name))
    info: dict[str, Any] = {
        "run_id": run.run_id,
        "method": variant,
        "variant": variant,
        "objective": name,
        "seed": None if is_base else cfg.get("seed", 0),
        "model": cfg.get("model"),
        "dataset": None if is_base else dataset.get("path"),
        "learning_rate": None if is_base else float(training.get("learning_rate", _default_lr())),
    }
    if not is_base:
        for k, v in sorted(_objective_params(name, objective).items()):
            info[f"param_{k}"] = v
        for k, v in sorted(training.items()):
            if k != "learning_rate" and isinstance(v, int | float | str | bool):
                info[f"training_{k}"] = v
    if meta.get("tuning_group") is not None:  # lr-tuned sweep: the method whose lr this run tries
        info["tuning_group"] = str(meta["tuning_group"])
    stages = stages_for(not is_base)
    status = run.status(stages)
    failure = next((run.failure(s) for s in stages if run.is_failed(s)), None)
    info["status"] = "corrupt" if problems else status
    info["error"] = _last_line(failure) if failure else None
    if problems:
        info["error"] = f"{problems[0].relpath}: {problems[0].reason}"
    info["order"] = order
    return info


def run_problems(run_path: Path) -> list[integrity.Problem]:
    """What the report would read from this run that does not read back: the outputs of its done stages
    (the summary of a trained run, every suite's results and samples; never the model weights), and every
    other results.json present (an unfinished evaluation's suites are read too)."""
    run = RunDir(run_path)
    try:
        cfg = yaml.safe_load(run.config_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    stages = stages_for(bool(isinstance(cfg, dict) and cfg.get("objective")))
    suites = integrity.configured_suites(run)
    problems = integrity.run_problems(run, stages, suites, model=False)
    checked = set(suites) if run.is_done(EVAL) else set()
    for results_file in sorted(run.eval_root.glob(f"*/{RESULTS_FILE}")):
        if results_file.parent.name not in checked:
            problems += integrity.suite_problems(run, results_file.parent.name)
    return problems


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _planned_order(sweep_dir: Path) -> dict[str, int]:
    plan = _read_json(SweepDir(sweep_dir).plan_file)
    return {run_id: i for i, run_id in enumerate(plan.get("runs", []))}


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's run directories in plan order.

    With a ``plan.json`` (written by ``sweep run``) only the planned runs count: a directory left by an
    earlier version of the sweep file or of the toy world (another config hash) is not part of this sweep
    and must not be averaged with it (see ``stale_run_dirs``). Without one, every run directory, by name.
    """
    order = _planned_order(sweep_dir)
    paths = sorted(_config_dirs(sweep_dir))
    if order:
        paths = [p for p in paths if p.name in order]
    return sorted(paths, key=lambda p: (order.get(p.name, len(order)), p.name))


def stale_run_dirs(sweep_dir: Path) -> list[Path]:
    """Run directories below ``sweep_dir`` that its ``plan.json`` does not list (left out of the report)."""
    order = _planned_order(sweep_dir)
    if not order:
        return []
    return sorted(_config_dirs(sweep_dir) - set(run_dirs(sweep_dir)))


def _config_dirs(sweep_dir: Path) -> set[Path]:
    """Every directory right below ``sweep_dir`` that holds a run config (planned or not)."""
    return {r.path for r in SweepDir(sweep_dir).run_dirs()}


def collect(
    sweep_dir: str | Path, problems: list[integrity.Problem] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every run directory below ``sweep_dir``.

    Returns ``(results, runs)``: the tidy results table (one row per run × task) and one row per run with
    its knobs, status (done / partial / pending / failed / corrupt) and the last line of a failure (of a
    corrupt run: its first unreadable file and why). Planned runs that have no directory yet are listed as
    pending. A suite whose files do not read back contributes no row; ``problems``, when given, receives
    every such file (``integrity.Problem``).
    """
    sweep_dir = Path(sweep_dir)
    order = _planned_order(sweep_dir)
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    seen = set()
    for i, run_path in enumerate(run_dirs(sweep_dir)):
        found = run_problems(run_path)
        if problems is not None:
            problems += found
        info = run_info(run_path, order.get(run_path.name, len(order) + i), found)
        runs.append(info)
        seen.add(info["run_id"])
        knobs = {k: v for k, v in info.items() if k not in ("status", "error", "order")}
        unreadable = {p.aside.name for p in found if p.stage == EVAL}  # the suite directories
        for results_file in sorted(RunDir(run_path).eval_root.glob(f"*/{RESULTS_FILE}")):
            if results_file.parent.name in unreadable:  # never average around a hole: named instead
                continue
            res = _read_json(results_file)
            for task, r in (res.get("tasks") or {}).items():
                rows.append(
                    {
                        **knobs,
                        "suite": res.get("suite", results_file.parent.name),
                        "task": task,
                        "domain": r.get("domain", "other"),
                        "split": r.get("split", "id"),
                        "metric": r.get("metric"),
                        "value": r.get("value"),
                        "stderr": r.get("stderr"),
                        "n": r.get("n"),
                        **({"sandbox": r["sandbox"]} if r.get("sandbox") else {}),  # code tasks: the layer
                    }
                )
    for run_id, i in order.items():  # planned, but not even a directory yet
        if run_id not in seen:
            runs.append(
                {"run_id": run_id, "method": run_id.rsplit("-", 1)[0], "status": "pending", "order": i}
            )
    runs_df = pd.DataFrame(runs)
    if not runs_df.empty:
        runs_df = runs_df.sort_values(["order", "run_id"], kind="stable").drop(columns="order")
        runs_df = runs_df.reset_index(drop=True)
        for col in ("variant", "objective", "seed", "error"):
            if col not in runs_df:
                runs_df[col] = None
    results = pd.DataFrame(rows)
    if not results.empty:
        knob_cols = sorted(c for c in results.columns if c.startswith(("param_", "training_")))
        results = results[
            RUN_COLUMNS + knob_cols + RESULT_COLUMNS + [c for c in ("sandbox",) if c in results]
        ]
    return results, runs_df


# ---------------------------------------------------------------------------------- per question
def _metric_key(metric: str | None) -> tuple[str, str | None]:
    """'exact_match,strict-match' -> ('exact_match', 'strict-match'): per-doc field and lm-eval filter."""
    name, _, flt = (metric or "").partition(",")
    return name, (flt or None)


def _sample_lines(path: Path, metric: str | None):
    """Per-document entries of a samples file for the primary metric's filter (lm-eval logs one per filter)."""
    key, flt = _metric_key(metric)
    for s in read_jsonl(path):
        if flt is not None and s.get("filter", flt) != flt:
            continue
        if key in s:
            yield key, s


def load_samples(sweep_dir: str | Path, results: pd.DataFrame) -> pd.DataFrame:
    """Per-question scores: one row per (run, task, doc_id) with the primary metric of that document.

    Columns: run_id, method, seed, suite, task, doc_id, score. Runs without sample logs contribute nothing.
    """
    sweep_dir = Path(sweep_dir)
    rows = []
    if results.empty:
        return pd.DataFrame(columns=["run_id", "method", "seed", "suite", "task", "doc_id", "score"])
    for r in results[["run_id", "method", "seed", "suite", "task", "metric"]].itertuples(index=False):
        path = RunDir(sweep_dir / r.run_id).samples_file(r.suite, r.task)
        for key, s in _sample_lines(path, r.metric):
            try:
                score = float(s[key])
            except (TypeError, ValueError):
                continue
            rows.append((r.run_id, r.method, r.seed, r.suite, r.task, s.get("doc_id"), score))
    return pd.DataFrame(rows, columns=["run_id", "method", "seed", "suite", "task", "doc_id", "score"])


def example_generations(
    sweep_dir: str | Path, results: pd.DataFrame, methods: list[str], n_docs: int = 3, max_chars: int = 700
) -> list[dict[str, Any]]:
    """A few documents of the first in-domain task, with each method's response (first seed that has it).

    Returns ``[{task, doc_id, prompt, target, responses: [{method, seed, response, extracted, score}]}]``.
    Texts are raw model output, truncated to ``max_chars`` (the prompt keeps its end, where the question is).
    """
    if results.empty:
        return []
    sweep_dir = Path(sweep_dir)
    tasks = results.sort_values("split", key=lambda s: s.ne("id"), kind="stable")
    task, suite = tasks.iloc[0][["task", "suite"]]
    sub = results[(results.task == task) & (results.suite == suite)]
    by_method: dict[str, dict[Any, dict]] = {}
    for m in methods:
        runs = sub[sub.method == m].sort_values("seed", na_position="first")
        for r in runs.itertuples():
            path = RunDir(sweep_dir / r.run_id).samples_file(suite, task)
            docs = {
                s.get("doc_id"): {**s, "_seed": r.seed, "_key": k} for k, s in _sample_lines(path, r.metric)
            }
            if docs:
                by_method[m] = docs
                break
    if not by_method:
        return []
    common = sorted(set.intersection(*(set(d) for d in by_method.values())), key=lambda x: (str(type(x)), x))
    out = []
    for doc_id in common[:n_docs]:
        first = next(iter(by_method.values()))[doc_id]
        args = first.get("arguments") or [[""]]
        prompt = args[0][0] if args and isinstance(args[0], list) and args[0] else str(args)
        entry = {
            "task": task,
            "doc_id": doc_id,
            "prompt": _clip(str(prompt), max_chars, keep="end"),
            "target": _clip(str(first.get("target", "")), max_chars),
            "responses": [],
        }
        for m, docs in by_method.items():
            s = docs[doc_id]
            resps = s.get("resps") or [[""]]
            raw = resps[0][0] if isinstance(resps[0], list) and resps[0] else resps[0]
            filtered = s.get("filtered_resps") or [""]
            seed = s["_seed"]
            entry["responses"].append(
                {
                    "method": m,
                    "seed": None
                    if seed is None or (isinstance(seed, float) and math.isnan(seed))
                    else int(seed),
                    "response": _clip(str(raw), max_chars),
                    "extracted": _clip(str(filtered[0]), 200),
                    "score": float(s[s["_key"]]),
                }
            )
        out.append(entry)
    return out


def _clip(text: str, n: int, keep: str = "start") -> str:
    if len(text) <= n:
        return text
    return "…" + text[-n:] if keep == "end" else text[:n] + "…"


# ------------------------------------------------------------------------------ training, compute
def load_metrics(sweep_dir: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Training logs of every run that has them: one row per (run, logged step)."""
    frames = []
    for r in runs.itertuples():
        rows = read_jsonl(RunDir(Path(sweep_dir) / r.run_id).metrics_file)
        rows = [x for x in rows if "step" in x and "loss" in x]  # skip the trainer's final summary line
        if rows:
            df = pd.DataFrame(rows)
            df.insert(0, "seed", r.seed)
            df.insert(0, "method", r.method)
            df.insert(0, "run_id", r.run_id)
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


COMPUTE_FIELDS = [
    "wall_time_s",
    "train_runtime_s",
    "steps",
    "response_tokens",
    "sampled_tokens",
    "generated_tokens",
    "peak_memory_mb",
    "flos",
]


def load_summaries(sweep_dir: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Compute accounting of every trained run (train/summary.json): one row per run."""
    rows = []
    for r in runs.itertuples():
        s = _read_json(RunDir(Path(sweep_dir) / r.run_id).summary_file)
        if s:
            rows.append(
                {
                    "run_id": r.run_id,
                    "method": r.method,
                    "seed": r.seed,
                    **{k: s.get(k) for k in COMPUTE_FIELDS},
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "method", "seed", *COMPUTE_FIELDS])
