"""Sweeps: plan a sweep file into runs, execute their stages, report their status.

``plan`` has no side effects. ``run`` creates one directory per run (``<slug>-<config hash>``), freezes its
config, and executes each pending stage (``train``, then ``eval``) in its own subprocess (the command of
``harness.execution.launch.stage_command``) with its own log file. A stage that is already done is skipped; a stage
that fails is marked failed (with its traceback) and the sweep goes on with the other runs, then exits
non-zero with a summary. Because every stage reads only what earlier stages wrote to disk, a killed sweep
resumes by running the same command again.

Executors decide where runs execute; all of them go through ``execute_run`` (one run: take its lock, clean
what a killed attempt left, run its pending stages), so resume and failure records are identical:

* ``local``: this machine, ``max_parallel`` runs at once (threads, each waiting on its stage subprocess);
  with GPUs each parallel slot gets its own ``CUDA_VISIBLE_DEVICES``;
* ``slurm`` (``harness.execution.slurm``): one SLURM array task per run, through submitit.

A run is executed by at most one process at a time: ``execute_run`` holds an exclusive ``flock`` on
``<run>/run.lock`` (released by the kernel when the holder dies, even by SIGKILL), and a second process that
finds it held skips the run as busy instead of duplicating its work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from harness.config import ConfigError, RunSpec, SweepConfig, expand_sweep, load_sweep_config
from harness.execution.launch import stage_command
from harness.paths import repo_root
from harness.runs.io import atomic_write_json, atomic_write_text
from harness.runs.layout import RunDir


def stages_of(spec: RunSpec) -> tuple[str, ...]:
    """The base model is only evaluated; every other run is trained, then evaluated."""
    return ("train", "eval") if spec.config.is_training else ("eval",)


@dataclasses.dataclass
class PlannedRun:
    spec: RunSpec
    out_dir: Path  # the sweep directory

    @functools.cached_property
    def run(self) -> RunDir:
        # Lazy: building 10,000 paths is a noticeable part of planning a large grid.
        return RunDir(self.out_dir / self.spec.run_id)

    @property
    def stages(self) -> tuple[str, ...]:
        return stages_of(self.spec)

    @property
    def status(self) -> str:
        return self.run.status(self.stages)


@dataclasses.dataclass
class Plan:
    sweep: SweepConfig
    source: Path
    out_dir: Path
    runs: list[PlannedRun]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts


def plan(sweep_file: str | Path, out_dir: str | Path | None = None) -> Plan:
    """Validate and expand a sweep file; look at (but never touch) the run directories."""
    sweep = load_sweep_config(sweep_file)
    specs = expand_sweep(sweep, str(sweep_file))
    out = Path(out_dir or sweep.output_dir or Path("runs") / sweep.name)
    return Plan(sweep, Path(sweep_file), out, [PlannedRun(s, out) for s in specs])


def environment() -> dict[str, Any]:
    """What produced a run: git SHA, package versions, hardware."""

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        sha = subprocess.run(
            ["git", "-C", str(repo_root()), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo_root()), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    env: dict[str, Any] = {
        "git_sha": sha or None,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {
            p: version(p)
            for p in (
                "otr-harness",
                "torch",
                "transformers",
                "datasets",
                "lm_eval",
                "accelerate",
                "vllm",
                "trl",
            )
        },
    }
    try:
        import torch

        env["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return env


def remove_stale_temps(directory: Path, recursive: bool = True) -> list[Path]:
    """Delete the temp files/dirs (``.<name>.<random>.tmp``, ``train/.final.tmp``) a killed process left behind.

    Atomic writes go through such temps and rename them into place; a SIGKILL between the two leaves the
    temp. Only call this on a directory no other process is writing to (a run's: while holding its lock).
    """
    if not directory.is_dir():
        return []
    pattern = "**/.*.tmp" if recursive else ".*.tmp"
    stale = sorted(directory.glob(pattern), key=lambda q: len(q.parts), reverse=True)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def _freeze(p: PlannedRun, sweep_name: str) -> None:
    """Create the run directory with its metadata and frozen config (idempotent: keyed by the config hash).

    meta.json is written before config.yaml, and both are checked: a sweep killed between the two writes
    must not leave a run without its metadata forever. Atomic writes only, so this is safe to call while
    another process executes the run.
    """
    meta = p.run.path / "meta.json"
    if not meta.exists():
        info = {"variant": p.spec.variant, "sweep": sweep_name}
        if p.spec.tuning_group is not None:
            info["tuning_group"] = p.spec.tuning_group
        atomic_write_json(meta, info)
    if not p.run.config_file.exists():
        p.run.write_config(p.spec.config)


def _prepare(p: PlannedRun, sweep_name: str) -> None:
    """``_freeze`` plus removing what a killed attempt left behind; only while holding the run's lock."""
    remove_stale_temps(p.run.path)
    _freeze(p, sweep_name)


LOCK_FILE = "run.lock"


@contextlib.contextmanager
def run_lock(run_path: Path) -> Iterator[bool]:
    """Try to take the run's exclusive lock (non-blocking). Yields whether this process holds it.

    ``flock`` is released by the kernel when the holder exits, however it dies, so a lock never goes stale.
    (On network file systems flock is only as good as the file system's lock support.)
    """
    run_path.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _run_stage(run: RunDir, stage: str, env: dict[str, str] | None = None) -> bool:
    """Run one stage in a subprocess, logging to logs/<stage>.log. True when it finished and is marked done.

    ``env``: variables set for the stage on top of this process's environment (a GPU slot's
    ``CUDA_VISIBLE_DEVICES``); they are written into the log's header line.
    """
    log_file = run.log_file(stage)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    run.clear_failure(stage)
    atomic_write_json(run.path / "env.json", environment())
    extra = "".join(f" {k}={v}" for k, v in sorted((env or {}).items()))
    with log_file.open("a") as log:
        log.write(f"\n===== {stage} started {time.strftime('%Y-%m-%d %H:%M:%S')}{extra} =====\n")
        log.flush()
        proc = subprocess.run(
            stage_command(stage, run.path, run.read_config()),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )
        log.write(f"===== {stage} exited {proc.returncode} {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
    if proc.returncode != 0 and not run.is_failed(stage):
        # Killed before it could record its own failure (OOM killer, signal): record it for it.
        tail = log_file.read_text().splitlines()[-30:]
        run.mark_failed(stage, f"exit code {proc.returncode}; last log lines:\n" + "\n".join(tail))
    return run.is_done(stage)


Outcome = Literal["done", "failed", "busy", "stopped"]
StageCallback = Callable[[str, str, bool, float], None]  # run id, stage, ok, seconds


def execute_run(
    run_path: str | Path,
    stages: tuple[str, ...],
    *,
    env: dict[str, str] | None = None,
    on_stage: StageCallback | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Execute the pending stages of one run whose directory (config.yaml, meta.json) exists.

    The single path every executor takes. Returns ``busy`` when another process holds the run's lock (it is
    being executed elsewhere: nothing is done here), ``failed`` when a stage failed (later stages are not
    run: a run whose training failed is not evaluated), ``stopped`` when ``stop`` was set before a stage
    could start, else ``done``.
    """
    run = RunDir(run_path)
    with run_lock(run.path) as held:
        if not held:
            return "busy"
        remove_stale_temps(run.path)  # safe: the lock says nobody else writes here
        for stage in stages:
            if run.is_done(stage):
                continue
            if stop is not None and stop.is_set():
                return "stopped"
            t0 = time.time()
            ok = _run_stage(run, stage, env)
            if on_stage is not None:
                on_stage(run.run_id, stage, ok, time.time() - t0)
            if not ok:
                return "failed"
    return "done"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists (or none)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if ids in ([], ["-1"]) else ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def device_slots(max_parallel: int, gpus: list[str] | None = None) -> list[dict[str, str]]:
    """Environment overrides of the ``max_parallel`` slots of the local executor.

    One slot: no override (the run sees every GPU, e.g. for multi-GPU training). Several slots with G GPUs:
    slot i gets GPU i mod G through ``CUDA_VISIBLE_DEVICES`` (more slots than GPUs share GPUs round-robin).
    Without GPUs the slots are plain processes.
    """
    if max_parallel < 1:
        raise ValueError("max_parallel must be >= 1")
    if max_parallel == 1:
        return [{}]
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        return [{} for _ in range(max_parallel)]
    return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(max_parallel)]


def run_local(
    runs: list[PlannedRun], max_parallel: int = 1, *, bar: Any = None, echo: Callable[[str], None] = print
) -> dict[str, Outcome]:
    """The local executor: ``max_parallel`` runs at once, each in a slot of ``device_slots``.

    Each run goes through ``execute_run`` in a worker thread (the work is in the stage subprocesses). On
    Ctrl-C no new stage starts; running stages get the interrupt from the terminal like this process.
    """
    slots: queue.SimpleQueue[dict[str, str]] = queue.SimpleQueue()
    layout = device_slots(max_parallel)
    for slot in layout:
        slots.put(slot)
    if max_parallel > 1:
        gpus = sorted({s["CUDA_VISIBLE_DEVICES"] for s in layout if s})
        echo(f"local executor: {max_parallel} runs at once" + (f" on GPUs {', '.join(gpus)}" if gpus else ""))
    stop = threading.Event()
    write = bar.write if bar is not None else echo

    def on_stage(run_id: str, stage: str, ok: bool, seconds: float) -> None:
        write(f"  {'done' if ok else 'FAILED'} {run_id} {stage} ({seconds:.0f} s)")

    def job(p: PlannedRun) -> Outcome:
        slot = slots.get()
        try:
            return execute_run(p.run.path, p.stages, env=slot, on_stage=on_stage, stop=stop)
        finally:
            slots.put(slot)

    outcomes: dict[str, Outcome] = {}
    pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="run")
    try:
        pending: dict[Future[Outcome], PlannedRun] = {pool.submit(job, p): p for p in runs}
        while pending:
            finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for f in finished:
                p = pending.pop(f)
                outcomes[p.run.run_id] = f.result()
                if outcomes[p.run.run_id] == "busy":
                    write(f"  busy {p.run.run_id}: another process is executing it; skipped")
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.set_postfix_str(f"{max_parallel - slots.qsize()} running")
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return outcomes


def _setup_sweep_dir(pl: Plan) -> None:
    pl.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(pl.out_dir, recursive=False)  # each run's own temps: under its lock, before it runs
    # Keep the sweep file beside its runs, so `report` and `status` need only the directory.
    if pl.source.resolve() != (pl.out_dir / "sweep.yaml").resolve():
        atomic_write_text(pl.out_dir / "sweep.yaml", pl.source.read_text())
    atomic_write_json(
        pl.out_dir / "plan.json", {"sweep": pl.sweep.name, "runs": [p.run.run_id for p in pl.runs]}
    )


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
        from harness.execution import slurm

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
        from harness import toy

        for toy_cfg in toy_configs.values():  # built once here, not by parallel runs racing for it
            world = toy.build(toy_cfg)
            echo(f"toy world ready: {world.root}")

    for p in todo:
        _freeze(p, pl.sweep.name)
    if executor == "slurm":
        from harness.execution import slurm

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


def load_plan_from_dir(sweep_dir: str | Path) -> Plan:
    """Re-plan a sweep from the copy of its file kept in the sweep directory."""
    sweep_dir = Path(sweep_dir)
    source = sweep_dir / "sweep.yaml"
    if not source.is_file():
        raise FileNotFoundError(
            f"{sweep_dir}: not a sweep directory (no sweep.yaml); run 'otr-harness sweep run' first"
        )
    return plan(source, sweep_dir)
