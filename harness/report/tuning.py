"""Per-method learning-rate selection of a tuned sweep (``lr_tuning:`` in the sweep file).

Protocol (``harness.config.LrTuning``): every method (variant × grid point, its ``tuning_group``) was run
at every learning rate of the grid and every seed. For each method:

1. on the selection task (``select.suite`` / ``select.task``, a task with ``split: val``), the mean over
   seeds of its primary metric is computed per learning rate (with the sample std and n = seeds that have
   a result);
2. the learning rate with the best mean is picked (``mode: max`` highest, ``min`` lowest); a tie goes to
   the learning rate listed first in ``lr_tuning.learning_rates``;
3. the report then shows each method only at its picked learning rate, on the test tasks. Validation
   rows are never results: they appear only in the selection table (and ``validation.csv``).

A method none of whose runs has a validation result yet is listed as not selected and left out of the
main table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import LrTuning
from harness.runs.layout import SweepDir


@dataclass
class Selection:
    suite: str
    task: str
    metric: str | None
    mode: str
    learning_rates: list[float]
    table: pd.DataFrame  # group, learning_rate, mean, std, n, selected
    chosen: dict[str, float] = field(default_factory=dict)  # group -> picked lr
    unselected: list[str] = field(default_factory=list)  # groups without any validation result


def read_tuning(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The ``lr_tuning`` block of the sweep file kept in the sweep directory (validated), or None."""
    block = SweepDir(sweep_dir).sweep_mapping().get("lr_tuning")
    if not block:
        return None
    try:
        return LrTuning.model_validate(block).model_dump()
    except ValueError:
        return None


def _groups(runs: pd.DataFrame) -> dict[str, str]:
    """run id -> tuning group, for the runs that have one."""
    if runs.empty or "tuning_group" not in runs:
        return {}
    sub = runs[runs["tuning_group"].notna()]
    return dict(zip(sub["run_id"], sub["tuning_group"].astype(str), strict=True))


def select(val: pd.DataFrame, runs: pd.DataFrame, tuning: dict[str, Any]) -> Selection:
    """Pick each method's learning rate on the validation task (see the module docstring)."""
    sel = tuning["select"]
    lrs = [float(x) for x in tuning["learning_rates"]]
    groups = _groups(runs)
    cols = ["group", "learning_rate", "mean", "std", "n", "selected"]
    rows = []
    sub = val[(val["suite"] == sel["suite"]) & (val["task"] == sel["task"])] if not val.empty else val
    sub = sub[sub["run_id"].isin(groups)] if not sub.empty else sub
    if not sub.empty:
        sub = sub.assign(group=sub["run_id"].map(groups), learning_rate=sub["learning_rate"].astype(float))
        agg = sub.groupby(["group", "learning_rate"], sort=False)["value"].agg(
            mean="mean", std="std", n="count"
        )
        rows = agg.reset_index().to_dict("records")
    table = pd.DataFrame(rows, columns=cols[:-1])
    order = list(dict.fromkeys(groups[r] for r in runs["run_id"] if r in groups)) if not runs.empty else []

    def lr_rank(lr: float) -> int:
        return next((i for i, x in enumerate(lrs) if math.isclose(x, lr, rel_tol=1e-9)), len(lrs))

    chosen: dict[str, float] = {}
    for g in order:
        cand = table[table["group"] == g]
        if cand.empty:
            continue
        sign = -1.0 if sel["mode"] == "max" else 1.0
        best = min(cand.itertuples(), key=lambda r: (sign * r.mean, lr_rank(r.learning_rate)))
        chosen[g] = float(best.learning_rate)
    table["selected"] = [
        chosen.get(g) == lr for g, lr in zip(table["group"], table["learning_rate"], strict=True)
    ]
    table["_g"] = table["group"].map({g: i for i, g in enumerate(order)})
    table["_l"] = table["learning_rate"].map(lr_rank)
    table = table.sort_values(["_g", "_l"], kind="stable").drop(columns=["_g", "_l"]).reset_index(drop=True)
    return Selection(
        suite=sel["suite"],
        task=sel["task"],
        metric=sel.get("metric"),
        mode=sel["mode"],
        learning_rates=lrs,
        table=table,
        chosen=chosen,
        unselected=[g for g in order if g not in chosen],
    )


def selected_runs(runs: pd.DataFrame, selection: Selection) -> dict[str, str]:
    """run id -> method name (its tuning group) for the runs at their method's picked learning rate."""
    out = {}
    groups = _groups(runs)
    for r in runs.itertuples():
        g = groups.get(r.run_id)
        lr = getattr(r, "learning_rate", None)
        if (
            g in selection.chosen
            and lr is not None
            and math.isclose(float(lr), selection.chosen[g], rel_tol=1e-9)
        ):
            out[r.run_id] = g
    return out


def apply(
    results: pd.DataFrame, runs: pd.DataFrame, selection: Selection
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results and runs the report compares: untuned runs (the base model) as they are, and each tuned
    method's runs at its picked learning rate only, renamed to the method (its tuning group)."""
    picked = selected_runs(runs, selection)
    groups = _groups(runs)
    keep_runs = runs[runs["run_id"].map(lambda r: r in picked or r not in groups)].copy()
    keep_runs["method"] = [
        picked.get(r, m) for r, m in zip(keep_runs["run_id"], keep_runs["method"], strict=True)
    ]
    if results.empty:
        return results, keep_runs.reset_index(drop=True)
    keep = results[results["run_id"].map(lambda r: r in picked or r not in groups)].copy()
    keep["method"] = [picked.get(r, m) for r, m in zip(keep["run_id"], keep["method"], strict=True)]
    return keep.reset_index(drop=True), keep_runs.reset_index(drop=True)
