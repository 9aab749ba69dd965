"""Run a sweep: plan it, prepare its directory, build the toy world once, execute the pending stages of every
run on an executor, and summarise. Also the status table of ``otr-harness sweep status``.

``run`` creates one directory per run (``<slug>-<config hash>``), freezes its config, and hands the pending
runs to the executor. Executors decide where runs execute; all of them go through
``harness.execution.stages.execute_run`` (one run: take its lock, clean what a killed attempt left, run its
pending stages), so resume and failure records are identical:

* ``local`` (``harness.execution.local``): this machine, ``max_parallel`` runs at once (threads, each
  waiting on its stage subprocess); with GPUs each parallel slot gets its own ``CUDA_VISIBLE_DEVICES``;
* ``slurm`` (``harness.execution.slurm``): one SLURM array task per run, through submitit.

Because every stage reads only what earlier stages wrote to disk, a killed sweep resumes by running the
same command again: done stages are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from harness import toy
from harness.config import ConfigError
from harness.execution import slurm
from harness.execution.local import run_local
from harness.execution.plan import Plan, PlannedRun, load_plan_from_dir, plan
from harness.execution.stages import freeze
from harness.runs.io import atomic_write_json, atomic_write_text, remove_stale_temps
from harness.runs.layout import SweepDir


def _setup_sweep_dir(pl: Plan) -> None:
    pl.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(pl.out_dir, recursive=False)  # each run's own temps: under its lock, before it runs
    # Keep the sweep file beside its runs, so `report` and `status` need only the directory.
    sweep_dir = SweepDir(pl.out_dir)
    if pl.source.resolve() != sweep_dir.sweep_file.resolve():
        atomic_write_text(sweep_dir.sweep_file, pl.source.read_text())
    atomic_write_json(sweep_dir.plan_file, {"sweep": pl.sweep.name, "runs": [p.run.run_id for p in pl.runs]})


def run(
    sweep_file: str | Path,
    out_dir: str | Path | None = None,
    *,
    executor: Literal["local", "slurm"] = "local",
    max_parallel: int | None = None,
    wait_for_jobs: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """Execute every pending stage of the sweep. Returns an exit code (0: every run done).

    ``executor``: ``local`` (this machine, ``max_parallel`` runs at once, default 1) or ``slurm`` (a job
    array; ``max_parallel`` caps the tasks running at once). ``wait_for_jobs=False`` (slurm only) returns
    once the array is submitted.
    """
    from tqdm import tqdm

    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel: must be >= 1 (got {max_parallel})")
    if not wait_for_jobs and executor != "slurm":
        raise ConfigError("--no-wait: only with --executor slurm (the local executor runs in this process)")
    pl = plan(sweep_file, out_dir)
    if executor == "slurm":
        slurm.check_available()  # before anything is written
    _setup_sweep_dir(pl)

    skipped = [p for p in pl.runs if p.status == "done"]
    todo = [p for p in pl.runs if p.status != "done"]
    echo(
        f"sweep '{pl.sweep.name}': {len(pl.runs)} runs in {pl.out_dir} — {len(skipped)} done (skipped), {len(todo)} to run"
    )
    for p in skipped:
        echo(f"  skip {p.run.run_id} (done)")

    toy_configs = {p.spec.config.toy.model_dump_json(): p.spec.config.toy for p in todo if p.spec.config.toy}
    if toy_configs:
        for toy_cfg in toy_configs.values():  # built once here, not by parallel runs racing for it
            world = toy.build(toy_cfg)
            echo(f"toy world ready: {world.root}")

    for p in todo:
        freeze(p, pl.sweep.name)
    if executor == "slurm":
        outcomes = slurm.run_slurm(pl, todo, max_parallel=max_parallel, wait=wait_for_jobs, echo=echo)
        if not wait_for_jobs:
            return 0
    else:
        bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not todo)
        try:
            outcomes = run_local(todo, max_parallel or 1, bar=bar, echo=echo)
        finally:
            bar.close()
    return summarise(pl, todo, outcomes, echo)


def summarise(
    pl: Plan, todo: list[PlannedRun], outcomes: dict[str, str], echo: Callable[[str], None] = print
) -> int:
    """Print what failed (with the last line of each traceback and its log) or was busy; the exit code."""
    failed = []
    for p in todo:
        stage = next((s for s in p.stages if p.run.is_failed(s)), None)
        if stage is not None:
            failed.append((p, stage))
    busy = [p for p in todo if outcomes.get(p.run.run_id) == "busy"]
    unfinished = [
        p for p in todo if p.status != "done" and p not in busy and all(q is not p for q, _ in failed)
    ]
    if failed:
        echo(f"{len(failed)} of {len(pl.runs)} runs failed:")
        for p, stage in failed:
            last = (p.run.failure(stage) or "").strip().splitlines()
            echo(f"  {p.run.run_id} [{stage}] {last[-1] if last else ''}  (log: {p.run.log_file(stage)})")
    if busy:
        echo(
            f"{len(busy)} runs were being executed by another process (skipped): {', '.join(p.run.run_id for p in busy)}"
        )
    if unfinished:
        echo(f"{len(unfinished)} runs did not finish: {', '.join(p.run.run_id for p in unfinished)}")
    if failed or busy or unfinished:
        return 1
    echo(f"sweep '{pl.sweep.name}': all {len(pl.runs)} runs done")
    return 0


def status_rows(pl: Plan) -> list[dict[str, str]]:
    return [
        {
            "run": p.run.run_id,
            "variant": p.spec.variant,
            "method": p.spec.config.method_label(),
            "seed": str(p.spec.config.seed) if p.spec.config.is_training else "-",
            "status": p.status,
        }
        for p in pl.runs
    ]


def format_table(rows: list[dict[str, str]]) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


__all__ = ["format_table", "load_plan_from_dir", "plan", "run", "status_rows", "summarise"]
