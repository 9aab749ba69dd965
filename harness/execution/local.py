"""The local executor: ``max_parallel`` runs at once on this machine, one GPU slot each when there are GPUs."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from harness.execution.plan import PlannedRun
from harness.execution.stages import Outcome, execute_run


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


def device_slots(
    max_parallel: int, gpus: list[str] | None = None, cpus: int | None = None
) -> list[dict[str, str]]:
    """Environment overrides of the ``max_parallel`` slots of the local executor.

    One slot: no override (the run sees every GPU, e.g. for multi-GPU training). Several slots with G GPUs:
    slot i gets GPU i mod G through ``CUDA_VISIBLE_DEVICES`` (more slots than GPUs share GPUs round-robin).
    Without GPUs each slot gets its share of the ``cpus`` usable cores (default: this process's) as
    ``OMP_NUM_THREADS`` (at least 1), unless the environment sets it: N processes with torch's default of
    one thread per core would oversubscribe the cores, and torch's per-op thread synchronisation then
    costs more than the op (measured on 2 cores with another process busy: a tiny model's evaluation
    generated in 19 s with 2 threads, 1.6 s with 1).
    """
    if max_parallel < 1:
        raise ValueError("max_parallel must be >= 1")
    if max_parallel == 1:
        return [{}]
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        if "OMP_NUM_THREADS" in os.environ:
            return [{} for _ in range(max_parallel)]
        cpus = cpus or len(os.sched_getaffinity(0))
        return [{"OMP_NUM_THREADS": str(max(1, cpus // max_parallel))} for _ in range(max_parallel)]
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
        gpus = sorted({s["CUDA_VISIBLE_DEVICES"] for s in layout if "CUDA_VISIBLE_DEVICES" in s})
        threads = layout[0].get("OMP_NUM_THREADS")
        where = f" on GPUs {', '.join(gpus)}" if gpus else f", {threads} CPU threads each" if threads else ""
        echo(f"local executor: {max_parallel} runs at once{where}")
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
