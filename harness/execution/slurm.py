"""The slurm executor: one SLURM array task per pending run, submitted through submitit.

Each task runs ``harness.execution.stages.execute_run`` on its run directory — the same path as the local executor:
it takes the run's lock, skips finished stages, runs each pending stage as a subprocess with its own log
(``<run>/logs/<stage>.log``) and records failures in ``<run>/status/``. Resources come from the sweep
file's ``slurm:`` block (``harness.config.SlurmConfig``).

Where things go:

* ``<sweep dir>/slurm/<job id>_<task>/``: submitit's files for a task (the pickled call, its result, the
  task's stdout/stderr ``*_log.out`` / ``*_log.err``);
* ``<run>/logs/slurm.json``: the run's task id and the paths of those two logs.

Waiting: the submitting command polls ``squeue`` (not ``sacct``, which clusters without accounting lack)
until no task of the array is queued or running, then reads each run's outcome from its run directory. A
task that ended without finishing its run (cancelled, time limit, node failure) gets its pending stage
marked failed with the tail of the task's log. Running ``sweep run`` again while tasks are still queued or
running attaches to them instead of submitting the runs twice.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.config import ConfigError, SlurmConfig
from harness.execution.plan import Plan, PlannedRun
from harness.execution.stages import Outcome, execute_run
from harness.runs.io import atomic_write_json
from harness.runs.layout import RunDir, SweepDir

# squeue states of a task that is not over yet.
ACTIVE_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}
POLL_SECONDS = float(os.environ.get("OTR_HARNESS_SLURM_POLL", "10"))


def check_available() -> None:
    """Raise ConfigError (exit 2, nothing written) when this machine cannot submit SLURM jobs."""
    missing = [c for c in ("sbatch", "squeue") if shutil.which(c) is None]
    if missing:
        raise ConfigError(
            f"--executor slurm: '{missing[0]}' is not on PATH; run from a SLURM login node (or use --executor local)"
        )
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--executor slurm: the 'submitit' package is missing; pip install submitit"
        ) from None
    try:
        active_tasks()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        last = (str(e).strip().splitlines() or [""])[-1]
        raise ConfigError(f"--executor slurm: cannot reach the SLURM controller ({last})") from None


def slurm_task(run_dir: str, stages: list[str]) -> str:
    """The function each array task runs (pickled by submitit): the run's pending stages, as locally."""

    def on_stage(run_id: str, stage: str, ok: bool, seconds: float) -> None:
        print(f"{'done' if ok else 'FAILED'} {run_id} {stage} ({seconds:.0f} s)", flush=True)

    print(f"run {run_dir}: stages {', '.join(stages)} on {os.uname().nodename}", flush=True)
    outcome = execute_run(Path(run_dir), tuple(stages), on_stage=on_stage)
    print(f"run {Path(run_dir).name}: {outcome}", flush=True)
    return outcome


def active_tasks() -> dict[str, str]:
    """Task id (``123_4``, or ``123`` for a single job) -> state, for this user's jobs still in the queue."""
    proc = subprocess.run(
        ["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--format", "%i|%T"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed: {proc.stderr.strip()}")
    tasks = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id and state in ACTIVE_STATES:
            tasks[job_id] = state
    return tasks


def slurm_record(run: RunDir) -> dict[str, Any] | None:
    """The run's last submission (logs/slurm.json), or None."""
    path = run.slurm_file
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _parameters(cfg: SlurmConfig, name: str, max_parallel: int | None) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters (sbatch option names) from the sweep's ``slurm:`` block."""
    params: dict[str, Any] = {"job_name": f"otr-{name}", "time": cfg.time}
    for key in ("partition", "cpus_per_task", "gpus_per_node", "mem", "account", "qos", "constraint"):
        value = getattr(cfg, key)
        if value is not None:
            params[key] = value
    parallel = max_parallel or cfg.array_parallelism
    if parallel is not None:
        params["array_parallelism"] = parallel
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    if cfg.additional_parameters:
        params["additional_parameters"] = {
            k.replace("_", "-"): v for k, v in cfg.additional_parameters.items()
        }
    return params


def submit(pl: Plan, runs: list[PlannedRun], max_parallel: int | None = None) -> list[Any]:
    """Submit one array task per run (a plain job for one run); record each task in its run directory."""
    import submitit

    cfg = pl.sweep.slurm or SlurmConfig()
    executor = submitit.SlurmExecutor(folder=SweepDir(pl.out_dir).slurm_dir / "%j", python=cfg.python)
    executor.update_parameters(**_parameters(cfg, pl.sweep.name, max_parallel))
    jobs = executor.map_array(slurm_task, [str(p.run.path) for p in runs], [list(p.stages) for p in runs])
    for p, job in zip(runs, jobs, strict=True):
        atomic_write_json(
            p.run.slurm_file,
            {
                "job_id": job.job_id,
                "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
                "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr),
            },
        )
    return jobs


def _tail(path: str | None, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:]) if path else ""
    except OSError:
        return ""


def _settle(p: PlannedRun, job_id: str) -> Outcome:
    """A task left the queue: its run's outcome from disk; a run it left unfinished is marked failed."""
    if p.run.status(p.stages) == "done":
        return "done"
    if any(p.run.is_failed(s) for s in p.stages):
        return "failed"
    record = slurm_record(p.run) or {}
    if f"run {p.run.run_id}: busy" in _tail(record.get("stdout"), 5):
        return "busy"  # another process held the run's lock: it did nothing, nothing failed
    stage = next(s for s in p.stages if not p.run.is_done(s))
    p.run.mark_failed(
        stage,
        f"SLURM task {job_id} ended before the run finished (cancelled, time limit or node failure?). "
        f"Task log {record.get('stderr')}, last lines:\n{_tail(record.get('stderr'))}\n"
        f"SLURM task {job_id} ended without finishing stage '{stage}'",
    )
    return "failed"


def run_slurm(
    pl: Plan,
    runs: list[PlannedRun],
    *,
    max_parallel: int | None = None,
    wait: bool = True,
    echo: Callable[[str], None] = print,
    poll_seconds: float = POLL_SECONDS,
) -> dict[str, Outcome]:
    """Submit the runs (those whose earlier task is still queued or running are attached to, not resubmitted);
    with ``wait``, poll until every task has left the queue and return each run's outcome."""
    from tqdm import tqdm

    active = active_tasks()
    attached: dict[str, str] = {}  # run id -> task id
    to_submit = []
    for p in runs:
        record = slurm_record(p.run)
        if record and record.get("job_id") in active:
            attached[p.run.run_id] = record["job_id"]
        else:
            to_submit.append(p)
    if attached:
        echo(f"  {len(attached)} runs already queued or running on SLURM (attached, not resubmitted)")
    if to_submit:
        jobs = submit(pl, to_submit, max_parallel)
        array_id = jobs[0].job_id.split("_")[0]
        echo(
            f"submitted SLURM job {array_id}: {len(jobs)} task(s), one per run; task logs in "
            f"{SweepDir(pl.out_dir).slurm_dir}, stage logs in <run>/logs/"
        )
        attached.update({p.run.run_id: job.job_id for p, job in zip(to_submit, jobs, strict=True)})
    if not wait:
        echo(f"not waiting: follow with `otr-harness sweep status {pl.out_dir}`; `sweep run` again attaches")
        return {}

    by_id = {p.run.run_id: p for p in runs}
    outcomes: dict[str, Outcome] = {}
    bar = tqdm(total=len(attached), desc="runs", unit="run", disable=not attached)
    try:
        while len(outcomes) < len(attached):
            queued = active_tasks()
            for run_id, job_id in attached.items():
                if run_id in outcomes or job_id in queued:
                    continue
                p = by_id[run_id]
                outcomes[run_id] = _settle(p, job_id)
                bar.write(
                    f"  {'done' if outcomes[run_id] == 'done' else 'FAILED'} {run_id} (SLURM task {job_id})"
                )
                bar.update(1)
            states = [queued[j] for r, j in attached.items() if r not in outcomes and j in queued]
            bar.set_postfix_str(f"{states.count('RUNNING')} running, {states.count('PENDING')} pending")
            if len(outcomes) < len(attached):
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        bar.close()
        echo(
            "stopped waiting; the SLURM tasks go on (scancel to stop them); `sweep run` again attaches to them"
        )
        raise
    bar.close()
    return outcomes


def queue_states(pl: Plan) -> dict[str, str]:
    """Run id -> 'queued' / 'running' for the runs whose recorded SLURM task is still in the queue."""
    records = {p.run.run_id: slurm_record(p.run) for p in pl.runs if p.run.slurm_file.exists()}
    if not records or shutil.which("squeue") is None:
        return {}
    try:
        active = active_tasks()
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for run_id, record in records.items():
        state = active.get((record or {}).get("job_id", ""))
        if state is not None:
            out[run_id] = "running" if state in {"RUNNING", "COMPLETING", "CONFIGURING"} else "queued"
    return out
