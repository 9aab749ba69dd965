"""The first two phases of ``render``: what a report is made of, read once and computed once.

* ``gather`` (phase 1): the run directories as frames (``collect``), validation rows set apart, and in an
  lr-tuned sweep each method's learning rate picked on validation (``tuning``), and every file that did
  not read back (``Collected.unreadable``): a ``Collected``.
* ``compute`` (phase 2): the main table (aggregated once, in report row order), the reference methods
  (SFT, base), the paired bootstrap, matching published numbers, training logs, compute accounting,
  forgetting, example generations and the other sweep of a comparison: a ``Computed``.

Everything after (figures, sections, documents) reads these two objects and no run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report import reference, tuning
from harness.report.collect import (
    collect,
    example_generations,
    load_metrics,
    load_samples,
    load_summaries,
    stale_run_dirs,
)
from harness.report.stats import (
    forgetting,
    main_table,
    order_table,
    pick_reference,
    seed_means,
    significance,
    task_order,
)
from harness.runs.layout import SweepDir


def sweep_name(sweep_dir: Path) -> str:
    """The ``name`` of the sweep file kept in the sweep directory, else the directory's name."""
    return str(SweepDir(sweep_dir).sweep_mapping().get("name", sweep_dir.name))


# ------------------------------------------------------------------------------ phase 1: gather
@dataclass
class Collected:
    """The sweep's runs and results as frames (``collect``'s columns)."""

    name: str  # the sweep's name
    all_results: pd.DataFrame  # test rows (split id / ood) of every run: results.csv
    val: pd.DataFrame  # validation rows (split val): model selection only, never results
    all_runs: pd.DataFrame  # every run, also the learning rates a tuned method was not picked at
    results: pd.DataFrame  # the test rows compared: a tuned method at its picked lr only, named after it
    runs: pd.DataFrame  # the runs compared (same selection as ``results``)
    selection: tuning.Selection | None  # the lr selection of a tuned sweep
    stale: list[Path]  # run directories the plan does not list (left out, named in the Runs section)
    unreadable: list[str]  # one line per file that did not read back (``integrity.Problem.line``)


def gather(sweep_dir: Path) -> Collected:
    """Read the sweep directory; set validation rows apart; apply the lr selection of a tuned sweep."""
    problems: list = []
    results, runs = collect(sweep_dir, problems)
    # Validation-split rows (model selection, e.g. the lr) are never results: set apart here.
    is_val = results["split"].eq("val") if not results.empty else pd.Series(dtype=bool)
    val, test = (results[is_val], results[~is_val]) if not results.empty else (results, results)
    lr_tuning = tuning.read_tuning(sweep_dir)
    selection = tuning.select(val, runs, lr_tuning) if lr_tuning and not runs.empty else None
    # Compare each method at its picked lr only.
    picked, picked_runs = tuning.apply(test, runs, selection) if selection is not None else (test, runs)
    return Collected(
        name=sweep_name(sweep_dir),
        all_results=test,
        val=val,
        all_runs=runs,
        results=picked,
        runs=picked_runs,
        selection=selection,
        stale=stale_run_dirs(sweep_dir),
        unreadable=[p.line() for p in problems],
    )


# ----------------------------------------------------------------------------- phase 2: compute
@dataclass
class Comparison:
    """The other sweep of ``render(compare=...)``: its path, name and main table."""

    path: Path
    name: str
    table: pd.DataFrame
    unreadable: list[str]  # its files that did not read back, as ``Collected.unreadable``


@dataclass
class Computed:
    """Every table and statistic of the report, each computed once."""

    methods: list[str]  # row order: the base model, SFT, then every other method in plan order
    table: pd.DataFrame  # the main table (``stats.main_table``); empty while nothing is evaluated
    sft: str | None  # the method the deltas and the bootstrap refer to
    base: str | None  # the untrained model
    sig: pd.DataFrame  # paired bootstrap vs ``sft``, rows in table order (empty without sample logs)
    matches: list[dict[str, Any]]  # published numbers that match the sweep (``reference.match``)
    metrics: pd.DataFrame  # training logs of the trained runs
    summaries: pd.DataFrame  # compute accounting of the trained runs
    forget: pd.DataFrame  # change vs the base model on OOD tasks
    examples: list[dict[str, Any]]  # example generations (raw model text)
    comparison: Comparison | None


def compute(
    c: Collected, sweep_dir: Path, *, ref_dir: Path, compare: Path | None, n_boot: int, seed: int
) -> Computed:
    """Every table and statistic the figures and sections read (see ``Computed``); the samples, training
    logs and compute summaries of the compared runs are read here, and the other sweep of ``compare``."""
    methods, table, sft, base = _main_table(c.results, c.runs)
    in_table = [str(m) for m in table["method"].cat.categories] if not table.empty else []
    sig = _significance(sweep_dir, c.results, table, sft, methods, in_table, n_boot, seed)
    trained = c.runs[c.runs["objective"].fillna("base") != "base"] if not c.runs.empty else c.runs
    return Computed(
        methods=methods,
        table=table,
        sft=sft,
        base=base,
        sig=sig,
        matches=reference.match(reference.load(ref_dir), table, c.runs) if not table.empty else [],
        metrics=load_metrics(sweep_dir, trained) if not trained.empty else pd.DataFrame(),
        summaries=load_summaries(sweep_dir, trained) if not trained.empty else pd.DataFrame(),
        forget=forgetting(table, base),
        examples=example_generations(sweep_dir, c.results, in_table) if not table.empty else [],
        comparison=_comparison(compare) if compare is not None else None,
    )


def _main_table(
    results: pd.DataFrame, runs: pd.DataFrame
) -> tuple[list[str], pd.DataFrame, str | None, str | None]:
    """(row order, main table, SFT, base): aggregated once; the rows are the base model, SFT, then every
    other method in plan order, so the references are picked from the aggregate before ordering it."""
    methods = list(dict.fromkeys(runs["method"])) if not runs.empty else []
    if results.empty:
        return methods, pd.DataFrame(), None, None
    means = seed_means(results)
    sft, base = pick_reference(runs, means, "sft"), pick_reference(runs, means, "base")
    methods = [m for m in (base, sft) if m] + [m for m in methods if m not in (base, sft)]
    return methods, order_table(means, results, methods), sft, base


def _significance(
    sweep_dir: Path,
    results: pd.DataFrame,
    table: pd.DataFrame,
    sft: str | None,
    methods: list[str],
    in_table: list[str],
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """Paired bootstrap of every method vs SFT per task, rows in main-table order (method, then task)."""
    if table.empty or sft is None:
        return pd.DataFrame()
    sig = significance(load_samples(sweep_dir, results), sft, in_table, n_boot, seed)
    rank = {t: i for i, (_, _, t) in enumerate(task_order(table))}
    sig = sig.assign(_m=sig["method"].map(methods.index), _t=sig["task"].map(rank))
    return sig.sort_values(["_m", "_t"], kind="stable").drop(columns=["_m", "_t"])


def _comparison(compare: Path) -> Comparison:
    """The other sweep's main table, its methods in its own plan order."""
    problems: list = []
    results, runs = collect(compare, problems)
    methods = list(dict.fromkeys(runs["method"])) if not runs.empty else []
    table = main_table(results, methods) if not results.empty else pd.DataFrame()
    unreadable = [f"{compare}: {p.line()}" for p in problems]
    return Comparison(path=compare, name=sweep_name(compare), table=table, unreadable=unreadable)
