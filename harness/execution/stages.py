"""Execute one run: the single path every executor takes (local threads and SLURM array tasks alike).

``execute_run`` takes the run's lock (``harness.runs.io.file_lock`` on ``RunDir.lock_file``: a second
process reaching the same run skips it as busy), removes what a killed attempt left behind, sets aside what
a done stage wrote that does not read back (``repair``: the stage is redone), and runs each pending stage
in its own subprocess (the command of ``harness.execution.launch.stage_command``) with its own log. A stage
that is already done is skipped; a stage that fails is marked failed with its traceback (or, when the
process was killed before it could, with the tail of its log), and later stages are not run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from harness.config import ConfigError, load_run_config
from harness.execution.launch import stage_command, train_command
from harness.execution.plan import PlannedRun
from harness.execution.worker import run_stage
from harness.runs import integrity
from harness.runs.io import atomic_write_json, file_lock, remove_stale_temps
from harness.runs.layout import EVAL, TRAIN, RunDir
from harness.runs.provenance import environment

Outcome = Literal["done", "failed", "busy", "stopped"]
StageCallback = Callable[[str, str, bool, float], None]  # run id, stage, ok, seconds


def freeze(p: PlannedRun, sweep_name: str) -> None:
    """Create the run directory with its metadata and frozen config (idempotent: keyed by the config hash).

    meta.json is written before config.yaml, and both are checked: a sweep killed between the two writes
    must not leave a run without its metadata forever. Atomic writes only, so this is safe to call while
    another process executes the run.
    """
    meta = p.run.meta_file
    if not meta.exists():
        info = {"variant": p.spec.variant, "sweep": sweep_name}
        if p.spec.tuning_group is not None:
            info["tuning_group"] = p.spec.tuning_group
        atomic_write_json(meta, info)
    if not p.run.config_file.exists():
        p.run.write_config(p.spec.config)


def prepare(p: PlannedRun, sweep_name: str) -> None:
    """``freeze`` plus removing what a killed attempt left behind; only while holding the run's lock."""
    remove_stale_temps(p.run.path)
    freeze(p, sweep_name)


def repair(run: RunDir, stages: tuple[str, ...], suites: list[str] | None = None) -> list[tuple[str, str]]:
    """Set aside what the run's stages wrote that does not read back, so that those stages run again.

    Only while holding the run's lock. Checks every done stage, and the suites an unfinished evaluation
    already wrote (the worker keeps those). Each damaged output goes to ``<run>/corrupt/<time>/`` (kept for
    inspection) and its stage loses its done marker. Returns (stage, line) per problem; the line names
    the file, why, and where it went.
    """
    suites = integrity.configured_suites(run) if suites is None else suites
    problems = integrity.run_problems(run, stages, suites)
    if EVAL in stages and not run.is_done(EVAL):
        written = [s for s in suites if run.results_file(s).exists()]
        problems += integrity.eval_problems(run, written)
    moved = dict(integrity.set_aside(problems))
    lines = []
    for p in problems:
        dest = moved.get(p.aside)
        where = f"; moved aside to {dest.relative_to(run.path).as_posix()}" if dest else ""
        lines.append((p.stage, f"corrupt {p.line()}{where}; redoing {p.stage}"))
    return lines


def _run_stage(run: RunDir, stage: str, env: dict[str, str] | None = None) -> bool:
    """Run one stage in a subprocess, logging to logs/<stage>.log. True when it finished and is marked done.

    ``env``: variables set for the stage on top of this process's environment (a GPU slot's
    ``CUDA_VISIBLE_DEVICES``); they are written into the log's header line.
    """
    log_file = run.log_file(stage)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    run.clear_failure(stage)
    atomic_write_json(run.env_file, environment())
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
    with file_lock(run.lock_file, blocking=False) as held:
        if not held:
            return "busy"
        remove_stale_temps(run.path)  # safe: the lock says nobody else writes here
        repaired = repair(run, stages)
        if repaired:  # said in the log of the stage that is redone (`sweep run` also echoes it)
            run.logs_dir.mkdir(parents=True, exist_ok=True)
            for stage, line in repaired:
                with run.log_file(stage).open("a") as log:
                    log.write(line + "\n")
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


def train_standalone(config_file: str | Path, out_dir: str | Path, overrides: Sequence[str] = ()) -> int:
    """``otr-harness train CONFIG --out DIR``: one training run outside a sweep, in this process (or under
    ``accelerate launch`` when the config has a ``launcher:``). Returns the exit code; prints the model.

    The run's ``TrainingArguments``, optimizer and data are checked first (``recipe.preflight``): a bad
    value or data file is a ``ConfigError`` naming the config file and the field, and nothing is written.
    """
    cfg = load_run_config(config_file, overrides)  # --set KEY=VALUE applied (harness.config.overrides)
    if not cfg.is_training:
        raise ConfigError(
            f"{config_file}: field 'objective': required to train (e.g. objective: {{name: sft}})"
        )
    from harness.training import recipe  # the direction execution -> training is the allowed one

    try:
        recipe.preflight(cfg)
    except ConfigError as e:
        raise ConfigError(f"{config_file}: {e}") from None
    run = RunDir(out_dir)
    run.write_config(cfg)
    if cfg.launcher is None:
        run_stage(TRAIN, run.path)
    else:  # several processes: `accelerate launch` runs the worker in each (see launch.train_command)
        code = subprocess.run(train_command(run.path, cfg)).returncode
        if code != 0 or not run.is_done(TRAIN):
            print(f"error: training failed (exit code {code}); see {run.failure_dir}", file=sys.stderr)
            return code or 1
    print(f"model: {run.final_model}")
    return 0
