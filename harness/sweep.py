"""Sweeps: plan a sweep file into runs, execute their stages, report their status.

``plan`` has no side effects. ``run`` creates one directory per run (``<slug>-<config hash>``), freezes its
config, and executes each pending stage (``train``, then ``eval``) in its own subprocess
(``python -m harness.worker STAGE RUN_DIR``) with its own log file. A stage that is already done is
skipped; a stage that fails is marked failed (with its traceback) and the sweep goes on with the other
runs, then exits non-zero with a summary. Because every stage reads only what earlier stages wrote to
disk, a killed sweep resumes by running the same command again.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.config import RunSpec, SweepConfig, expand_sweep, load_sweep_config
from harness.launch import stage_command
from harness.paths import repo_root
from harness.rundir import RunDir, atomic_write_json, atomic_write_text


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
    temp. Only call this on a directory no other process is writing to (the sweep runs one stage at a time).
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


def _prepare(p: PlannedRun, sweep_name: str) -> None:
    """Create the run directory with its frozen config (idempotent: the config is keyed by its hash).

    meta.json is written before config.yaml, and both are checked: a sweep killed between the two writes
    must not leave a run without its metadata forever.
    """
    remove_stale_temps(p.run.path)
    meta = p.run.path / "meta.json"
    if not meta.exists():
        atomic_write_json(meta, {"variant": p.spec.variant, "sweep": sweep_name})
    if not p.run.config_file.exists():
        p.run.write_config(p.spec.config)


def _run_stage(p: PlannedRun, stage: str) -> bool:
    """Run one stage in a subprocess, logging to logs/<stage>.log. True when it finished and is marked done."""
    log_file = p.run.log_file(stage)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    p.run.clear_failure(stage)
    atomic_write_json(p.run.path / "env.json", environment())
    with log_file.open("a") as log:
        log.write(f"\n===== {stage} started {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        log.flush()
        proc = subprocess.run(
            stage_command(stage, p.run.path, p.spec.config),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    if proc.returncode != 0 and not p.run.is_failed(stage):
        # Killed before it could record its own failure (OOM killer, signal): record it for it.
        tail = log_file.read_text().splitlines()[-30:]
        p.run.mark_failed(stage, f"exit code {proc.returncode}; last log lines:\n" + "\n".join(tail))
    return p.run.is_done(stage)


def run(sweep_file: str | Path, out_dir: str | Path | None = None, *, echo=print) -> int:
    """Execute every pending stage of the sweep (local executor, one run at a time). Returns an exit code."""
    from tqdm import tqdm

    pl = plan(sweep_file, out_dir)
    pl.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(pl.out_dir, recursive=False)  # each run's own temps: in _prepare, before it runs
    # Keep the sweep file beside its runs, so `report` and `status` need only the directory.
    if pl.source.resolve() != (pl.out_dir / "sweep.yaml").resolve():
        atomic_write_text(pl.out_dir / "sweep.yaml", pl.source.read_text())
    atomic_write_json(
        pl.out_dir / "plan.json", {"sweep": pl.sweep.name, "runs": [p.run.run_id for p in pl.runs]}
    )

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

        for toy_cfg in toy_configs.values():
            world = toy.build(toy_cfg)
            echo(f"toy world ready: {world.root}")

    failed: list[tuple[PlannedRun, str]] = []
    bar = tqdm(todo, desc="runs", unit="run", disable=not todo)
    for p in bar:
        _prepare(p, pl.sweep.name)
        for stage in p.stages:
            if p.run.is_done(stage):
                continue
            bar.set_postfix_str(f"{p.run.run_id}: {stage}")
            t0 = time.time()
            ok = _run_stage(p, stage)
            bar.write(f"  {'done' if ok else 'FAILED'} {p.run.run_id} {stage} ({time.time() - t0:.0f} s)")
            if not ok:
                failed.append((p, stage))
                break  # a run whose training failed is not evaluated
    bar.close()

    if failed:
        echo(f"{len(failed)} of {len(pl.runs)} runs failed:")
        for p, stage in failed:
            last = (p.run.failure(stage) or "").strip().splitlines()
            echo(f"  {p.run.run_id} [{stage}] {last[-1] if last else ''}  (log: {p.run.log_file(stage)})")
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
