"""Published numbers (``evaluation/reference/*.yaml``) beside the reproduced ones, when a sweep matches.

An entry matches a sweep when one of the sweep's runs uses the entry's model (the full name, or its last
path component: ``Qwen/Qwen2.5-Math-1.5B`` matches a local ``/models/Qwen2.5-Math-1.5B``) and the sweep
evaluated at least one task listed under a benchmark of the file. The schema is in the folder's README.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.paths import evaluation_dir


def default_dir() -> Path:
    return evaluation_dir() / "reference"


def load(ref_dir: Path | None) -> list[dict[str, Any]]:
    """Every reference file in ``ref_dir`` (sorted by name); unreadable files are skipped."""
    if ref_dir is None or not Path(ref_dir).is_dir():
        return []
    out = []
    for path in sorted(Path(ref_dir).glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(data, dict):
            out.append({**data, "file": path.name})
    return out


def _model_matches(ref_model: str, run_model: str) -> bool:
    a, b = str(ref_model).lower().rstrip("/"), str(run_model).lower().rstrip("/")
    return a == b or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]


def match(refs: list[dict[str, Any]], table: pd.DataFrame, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Comparison tables for the entries that match this sweep.

    ``table`` is the main table (method × task: mean, n); returns one dict per matched entry:
    ``{source, url, metric, model, train_data, columns: [benchmark], rows: [{method, cells: [(published,
    reproduced)]}]}`` with values in % (None where absent). A reproduced method is the variant named like the
    published one, else the first variant whose objective has that name ('base': the untrained model).
    """
    if table.empty or runs.empty:
        return []
    models = {str(m) for m in runs.get("model", pd.Series(dtype=object)).dropna()}
    tasks = set(table["task"])
    variants = list(dict.fromkeys(runs["method"]))
    objective_of = dict(zip(runs["method"], runs["objective"], strict=False))
    mean = {(str(r.method), r.task): r.mean for r in table.itertuples()}
    out = []
    for ref in refs:
        benchmarks: dict[str, list[str]] = ref.get("benchmarks") or {}
        averages: dict[str, list[str]] = ref.get("averages") or {}
        for entry in ref.get("results") or []:
            if not any(_model_matches(entry.get("model", ""), m) for m in models):
                continue
            task_of = {b: next((t for t in names if t in tasks), None) for b, names in benchmarks.items()}
            if not any(task_of.values()):
                continue
            scores: dict[str, dict[str, Any]] = entry.get("scores") or {}
            columns = [b for b in benchmarks if task_of[b]]
            columns += [a for a, parts in averages.items() if all(task_of.get(p) for p in parts)]
            rows = []
            for method, published in scores.items():
                variant = method if method in variants else None
                variant = variant or next((v for v in variants if objective_of.get(v) == method), None)
                cells = []
                for b in columns:
                    parts = averages.get(b, [b])
                    rep = [mean.get((variant, task_of[p])) for p in parts] if variant else [None]
                    rep_val = (
                        100 * sum(rep) / len(rep)
                        if rep and all(v is not None and not math.isnan(v) for v in rep)
                        else None
                    )
                    cells.append(((published or {}).get(b), rep_val))
                rows.append({"method": method, "variant": variant, "cells": cells})
            out.append(
                {
                    "source": ref.get("source", ref["file"]),
                    "url": ref.get("url"),
                    "metric": ref.get("metric", ""),
                    "model": entry.get("model"),
                    "train_data": entry.get("train_data", ""),
                    "columns": [f"{b} ({task_of[b]})" if b in task_of else b for b in columns],
                    "rows": rows,
                }
            )
    return out
