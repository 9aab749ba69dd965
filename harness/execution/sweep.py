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
same command again: done stages are skipped. A run whose done stage's outputs do not read back is
``corrupt`` (``harness.runs.integrity``): ``run`` moves the damaged output aside (``stages.repair``) and
redoes that stage only.

Nothing is written before every run to execute has passed ``harness.training.recipe.preflight`` (its full
``TrainingArguments``, optimizer and data, checked once per distinct setting): a bad value or data file
stops the sweep with one line naming the run and the field, before any run starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from harness import toy
from harness.config import ConfigError
from harness.config.io import effective_sweep_text
from harness.execution import slurm
from harness.execution.local import run_local
from harness.execution.plan import Plan, PlannedRun, load_plan_from_dir, plan
from harness.execution.stages import freeze, repair
from harness.objectives.params import trainer_of
from harness.runs.io import atomic_write_json, atomic_write_text, file_lock, remove_stale_temps
from harness.runs.layout import TRAIN, SweepDir


def _setup_sweep_dir(pl: Plan) -> None:
    pl.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(pl.out_dir, recursive=False)  # each run's own temps: under its lock, before it runs
    # Keep the sweep file beside its runs, so `report` and `status` need only the directory.
    sweep_dir = SweepDir(pl.out_dir)
    if pl.overrides or pl.source.resolve() != sweep_dir.sweep_file.resolve():
        # With --set: the file as overridden, so that re-planning the directory gives the same runs.
        atomic_write_text(sweep_dir.sweep_file, effective_sweep_text(pl.source, pl.overrides))
    atomic_write_json(sweep_dir.plan_file, {"sweep": pl.sweep.name, "runs": [p.run.run_id for p in pl.runs]})


def run(
    sweep_file: str | Path,
    out_dir: str | Path | None = None,
    *,
    executor: Literal["local", "slurm"] = "local",
    max_parallel: int | None = None,
    wait_for_jobs: bool = True,
    echo: Callable[[str], None] = print,
    overrides: Sequence[str] = (),
) -> int:
    """Execute every pending stage of the sweep. Returns an exit code (0: every run done).

    ``overrides``: ``--set KEY=VALUE`` applied to the file (``harness.config.overrides``); the sweep
    directory keeps the file as overridden.

    ``executor``: ``local`` (this machine, ``max_parallel`` runs at once, default 1) or ``slurm`` (a job
    array; ``max_parallel`` caps the tasks running at once). ``wait_for_jobs=False`` (slurm only) returns
    once the array is submitted.
    """
    from tqdm import tqdm

    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel: must be >= 1 (got {max_parallel})")
    if not wait_for_jobs and executor != "slurm":
        raise ConfigError("--no-wait: only with --executor slurm (the local executor runs in this process)")
    pl = plan(sweep_file, out_dir, overrides)
    if executor == "slurm":
        slurm.check_available()  # before anything is written

    status = {p.run.run_id: p.status for p in pl.runs}
    skipped = [p for p in pl.runs if status[p.run.run_id] == "done"]
    todo = [p for p in pl.runs if status[p.run.run_id] != "done"]
    corrupt = [p for p in todo if status[p.run.run_id] == "corrupt"]
    echo(
        f"sweep '{pl.sweep.name}': {len(pl.runs)} runs in {pl.out_dir} — {len(skipped)} done (skipped), {len(todo)} to run"
        + (f" ({len(corrupt)} corrupt: outputs that do not read back)" if corrupt else "")
    )
    for p in skipped:
        echo(f"  skip {p.run.run_id} (done)")

    toy_configs = {p.spec.config.toy.model_dump_json(): p.spec.config.toy for p in todo if p.spec.config.toy}
    if toy_configs:
        for toy_cfg in toy_configs.values():  # built once here, not by parallel runs racing for it
            world = toy.build(toy_cfg)
            echo(f"toy world ready: {world.root}")
    preflight(pl, todo, device_check=executor == "local", echo=echo)  # before anything is written

    _setup_sweep_dir(pl)
    for p in todo:
        freeze(p, pl.sweep.name)
    for p in corrupt:  # the damaged outputs go aside; the executor redoes their stages
        with file_lock(p.run.lock_file, blocking=False) as held:
            if held:  # else another process executes the run (the executor reports it busy)
                for _, line in repair(p.run, p.stages, p.suites):
                    echo(f"  {line}")
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


def preflight(
    pl: Plan, todo: list[PlannedRun], *, device_check: bool = True, echo: Callable[[str], None] = print
) -> None:
    """Check every run to execute as ``harness.training.recipe.preflight`` does, each distinct setting
    once (seeds share theirs); raise ``ConfigError`` naming the sweep file, the run and the field.

    ``device_check=False`` (runs execute elsewhere, e.g. SLURM) leaves out the precision flags whose validity
    depends on the machine. Imports transformers only when some run trains.
    """
    # Runs whose training is done (only an evaluation left, or redone) need no training check.
    trained = [p for p in todo if p.spec.config.is_training and not p.run.is_done(TRAIN)]
    if not trained:
        return
    from harness.training import recipe

    started, seen_args, seen_data = time.time(), set(), set()
    for p in trained:
        cfg = p.spec.config
        assert cfg.dataset is not None and cfg.objective is not None
        # A method with its own trainer (grpo) checks its parameters and data (the reward's references)
        # beyond the token-level runs' checks: its objective is part of both keys.
        own = cfg.objective.model_dump(mode="json") if trainer_of(cfg.objective.name) != "objective" else None
        args_key = json.dumps([cfg.training_arguments(), own], sort_keys=True, default=str)
        data_key = json.dumps(
            [
                cfg.model,
                cfg.dataset.model_dump(mode="json"),
                cfg.toy.model_dump(mode="json") if cfg.toy else None,
                own,
            ],
            sort_keys=True,
        )
        if args_key in seen_args and data_key in seen_data:
            continue
        try:
            recipe.preflight(cfg, data=data_key not in seen_data, device_check=device_check)
        except ConfigError as e:
            raise ConfigError(f"{pl.source}: run {p.run.run_id} (variant '{p.spec.variant}'): {e}") from None
        seen_args.add(args_key)
        seen_data.add(data_key)
    echo(
        f"checked {len(seen_args)} training setting(s) and {len(seen_data)} dataset(s) of {len(trained)} runs "
        f"({time.time() - started:.0f} s)"
    )


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


def status_rows(pl: Plan, problems: list[str] | None = None) -> list[dict[str, str]]:
    """One row per run (run, variant, method, seed, status). ``problems``, when given, receives one line
    per output of a ``corrupt`` run that does not read back (``integrity.Problem.line``)."""
    rows = []
    for p in pl.runs:
        status, found = p.check()
        if problems is not None:
            problems += [f.line() for f in found]
        rows.append(
            {
                "run": p.run.run_id,
                "variant": p.spec.variant,
                "method": p.spec.config.method_label(),
                "seed": str(p.spec.config.seed) if p.spec.config.is_training else "-",
                "status": status,
            }
        )
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


__all__ = ["format_table", "load_plan_from_dir", "plan", "preflight", "run", "status_rows", "summarise"]
