"""Kill soak: SIGKILL a tiny-world sweep at random moments, resume it each time, check nothing was lost.

    python benchmarks/kill_soak.py                  # 20 kills (the figure in benchmarks/README.md)
    python benchmarks/kill_soak.py --kills 8 --seed 3 --work /tmp/soak --keep

The sweep: the tiny toy world, base + SFT + OTR (K=4), one seed, 6 training steps with a checkpoint every 2
steps, 3 questions per task; ``sweep run`` with its report. First an uninterrupted reference run. Then
episodes, each a fresh sweep directory (and a fresh evaluation cache, so evaluations really run): the
sweep is started, and killed with SIGKILL (its whole process group: the sweep and its stage worker) at a
random moment of a target phase, cycling through

* ``train``       a random 0-8 s after a training stage started (start-up, data, steps);
* ``checkpoint``  the moment a checkpoint directory exists without its counters file (mid-save);
* ``eval``        a random 0-6 s after an evaluation stage started;
* ``report``      a random 0-4 s after every stage is done (the sweep is writing the report);

then started again. When the next target phase cannot come any more (no training left to kill), the
episode's sweep is run to the end uninterrupted and checked:

* every stage done exactly once: a done marker is never rewritten once it exists, and each stage log
  shows one successful exit;
* results equal the uninterrupted sweep's (every results.json: value, stderr, n per task; the report's
  results.csv byte for byte and report.md apart from the sweep directory it names);
* no temp or partial file remains: no ``.*.tmp``, no checkpoint without its counters file, every JSON file
  parses, every run reads back (``harness.runs.integrity``);
* a second ``sweep run`` skips every run.

A kill is *survived* when its episode passes every check. Prints one line per kill (target, where it
landed) and per episode, then ``kills survived: N / 20, partial files: P, mismatches: M``. Not a CI test
(CPU-heavy: about 25-40 minutes on 2 shared cores); ``tests/test_sweep.py`` keeps a 3-kill version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness import toy
from harness.runs import integrity
from harness.runs.layout import COUNTERS_FILE, EVAL, TRAIN, RunDir, SweepDir, checkpoint_dirs

PHASES = ("train", "checkpoint", "eval", "report")
N_STAGES, N_RUNS = 5, 3  # base eval, sft train + eval, otr train + eval


def sweep_config(toy_cfg: toy.ToyConfig) -> dict:
    return {
        "name": "soak",
        "toy": toy_cfg.model_dump(mode="json"),
        "base": {
            "model": "toy:base",
            "dataset": toy.dataset_config(max_length=128, max_examples=48),
            "training": {
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 4,
                "max_steps": 6,
                "logging_steps": 1,
                "save_strategy": "steps",
                "save_steps": 2,
            },
            "eval": {"suites": ["toy"], "limit": 3, "batch_size": 8},
        },
        "variants": {
            "sft": {"objective": {"name": "sft"}},
            "otr": {"objective": {"name": "otr", "k": 4, "tau": 1.2, "beta": -0.1}},
        },
        "seeds": [0],
        "evaluate_base": True,
    }


class Sweep:
    """One sweep directory with its report directory and evaluation cache."""

    def __init__(self, root: Path, sweep_file: Path):
        self.root, self.sweep_file = root, sweep_file
        self.out, self.report = root / "runs", root / "report"
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OTR_HARNESS_EVAL_CACHE": str(root / "eval-cache"),
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "harness.cli", "sweep", "run", str(self.sweep_file), "--out", str(self.out),
                "--report-dir", str(self.report)]  # fmt: skip

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(), env=self.env, capture_output=True, text=True)

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command(), env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    # --- what is happening now (read from the directory, polled) -------------------------------------
    def runs(self) -> list[RunDir]:
        return SweepDir(self.out).run_dirs() if self.out.is_dir() else []

    def markers(self) -> dict[str, int]:
        return {str(p.relative_to(self.out)): p.stat().st_mtime_ns for p in self.out.glob("*/status/*.done")}

    def running_stage(self) -> str | None:
        """The stage whose log's last header says started (not exited), if any."""
        for log in self.out.glob("*/logs/*.log"):
            try:
                headers = [line for line in log.read_text().splitlines() if line.startswith("===== ")]
            except OSError:
                continue
            if headers and " started " in headers[-1]:
                return log.stem
        return None

    def torn_checkpoint(self, since: float) -> bool:
        """A checkpoint being written now: made since ``since`` (a kill's leftover is older) and without
        the counters file that completes it."""
        for r in self.runs():
            for c in checkpoint_dirs(r.train_dir):
                try:
                    if c.stat().st_mtime >= since and not (c / COUNTERS_FILE).exists():
                        return True
                except OSError:  # removed while we looked
                    continue
        return False

    def phase(self, since: float) -> str:
        """Where a kill now would land (``since``: when this attempt started)."""
        if self.torn_checkpoint(since):
            return "checkpoint"
        stage = self.running_stage()
        if stage is not None:
            return stage
        return "report" if len(self.markers()) == N_STAGES else "startup"

    def pending(self, stage: str) -> bool:
        return any(
            not r.is_done(stage) for r in self.runs() if stage == EVAL or r.run_id.split("-")[0] != "base"
        )


def kill_once(sw: Sweep, target: str, rng: random.Random, timeout: float = 900.0) -> str | None:
    """Start the sweep, kill it during ``target``; return where it landed (None: it finished first)."""
    proc = sw.start()
    t0 = time.time()
    try:
        armed_at: float | None = None
        delay = {"train": rng.uniform(0, 8), "eval": rng.uniform(0, 6), "report": rng.uniform(0, 4)}.get(
            target, 0.0
        )
        while proc.poll() is None and time.time() - t0 < timeout:
            if armed_at is None and sw.phase(t0) == target:
                armed_at = time.time()
            if armed_at is not None and time.time() - armed_at >= delay:
                landed = sw.phase(t0)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return landed
            time.sleep(0.005 if target == "checkpoint" else 0.05)
        return None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def results(out: Path) -> dict:
    res: dict = {}
    for f in sorted(out.glob("*/eval/*/results.json")):
        tasks = json.loads(f.read_text())["tasks"]
        res.setdefault(f.parents[2].name, {})[f.parent.name] = {
            t: (r["value"], r.get("stderr"), r["n"]) for t, r in sorted(tasks.items())
        }
    return res


def partial_files(sw: Sweep) -> list[str]:
    """Temp files, torn checkpoints, JSON that does not parse, runs that do not read back."""
    found = []
    for root in (sw.out, sw.report):
        for p in root.rglob("*"):
            if p.name.endswith(".tmp") or (p.name.startswith(".") and p.name != ".gitignore"):
                found.append(f"temp: {p.relative_to(sw.root)}")
    for r in sw.runs():
        for c in checkpoint_dirs(r.train_dir):
            if not (c / COUNTERS_FILE).exists():
                found.append(f"torn checkpoint: {c.relative_to(sw.root)}")
        stages = (EVAL,) if r.run_id.startswith("base-") else (TRAIN, EVAL)
        found += [f"corrupt: {p.line()}" for p in integrity.run_problems(r, stages)]
    for f in sw.out.rglob("*.json"):
        try:
            json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            found.append(f"bad json: {f.relative_to(sw.root)}")
    return found


def _comparable_md(sw: Sweep) -> str:
    """report.md without what differs between two correct sweeps: the directory it names and the Compute
    section (wall-clock times)."""
    md = (sw.report / "report.md").read_text().replace(str(sw.out), "<sweep>")
    return "\n## ".join(s for s in md.split("\n## ") if not s.startswith("Compute\n"))


def check_episode(sw: Sweep, ref: Sweep, seen_markers: dict[str, int]) -> tuple[list[str], list[str]]:
    """(mismatches, partial files) of a finished episode against the reference."""
    bad: list[str] = []
    markers = sw.markers()
    if len(markers) != N_STAGES:
        bad.append(f"{len(markers)} of {N_STAGES} stages done")
    rewritten = [k for k, v in seen_markers.items() if markers.get(k) != v]
    bad += [f"done marker rewritten: {k}" for k in rewritten]
    for log in sorted(sw.out.glob("*/logs/*.log")):
        ok = log.read_text().count(" exited 0 ")
        if ok != 1:
            bad.append(f"{log.relative_to(sw.out)}: {ok} successful exits (expected 1)")
    if results(sw.out) != results(ref.out):
        bad.append("results.json values differ from the uninterrupted sweep")
    if (sw.report / "results.csv").read_bytes() != (ref.report / "results.csv").read_bytes():
        bad.append("report results.csv differs")
    if _comparable_md(sw) != _comparable_md(ref):
        bad.append("report.md differs")
    again = sw.run()
    if again.returncode != 0 or f"{N_RUNS} done (skipped), 0 to run" not in again.stdout:
        bad.append(f"a second sweep run did not skip everything: {again.stdout.splitlines()[:1]}")
    return bad, partial_files(sw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cfg = toy.ToyConfig.preset("tiny")
    toy.build(cfg, progress=False)
    sweep_file = work / "soak.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep_config(cfg)))

    ref = Sweep(work / "reference", sweep_file)
    t0 = time.time()
    done = ref.run()
    if done.returncode != 0:
        print(done.stdout + done.stderr)
        return 1
    print(f"reference sweep: {time.time() - t0:.0f} s", flush=True)

    kills = survived = 0
    mismatches: list[str] = []
    partials: list[str] = []
    landed_at: dict[str, int] = {}
    episode = 0
    while kills < args.kills:
        episode += 1
        sw = Sweep(work / f"episode{episode}", sweep_file)
        seen: dict[str, int] = {}
        episode_kills = 0
        while kills < args.kills:
            target = PHASES[kills % len(PHASES)]
            if target in ("train", "checkpoint") and sw.runs() and not sw.pending(TRAIN):
                break  # no training left in this episode: finish it, check it, start the next
            landed = kill_once(sw, target, rng)
            markers = sw.markers()
            rewritten = [k for k, v in seen.items() if markers.get(k) != v]
            if rewritten:
                mismatches.append(f"episode {episode}: done marker rewritten after a kill: {rewritten}")
            seen = markers
            if landed is None:
                print(f"  episode {episode}: the sweep finished before a '{target}' kill", flush=True)
                break
            kills += 1
            episode_kills += 1
            landed_at[landed] = landed_at.get(landed, 0) + 1
            print(
                f"  kill {kills:2d} (episode {episode}): target {target:10s} landed in {landed}", flush=True
            )
        final = sw.run()
        if final.returncode != 0:
            bad, part = (
                [f"episode {episode}: the resumed sweep failed: {final.stdout[-500:]}"],
                partial_files(sw),
            )
        else:
            bad, part = check_episode(sw, ref, seen)
        bad = [b if b.startswith("episode") else f"episode {episode}: {b}" for b in bad]
        mismatches += bad
        partials += [f"episode {episode}: {p}" for p in part]
        if not bad and not part:
            survived += episode_kills
        status = "ok" if not bad and not part else f"{len(bad)} mismatches, {len(part)} partial files"
        print(
            f"episode {episode}: {episode_kills} kills, {status} ({time.time() - started:.0f} s)", flush=True
        )
        for line in bad + part:
            print(f"    {line}")
    cache_temps = sum(1 for p in work.glob("*/eval-cache/**/.*.tmp"))
    print(f"kills landed in: {', '.join(f'{k} {v}' for k, v in sorted(landed_at.items()))}")
    print(f"evaluation-cache temps left by kills (outside the sweep): {cache_temps}")
    print(
        f"kills survived: {survived} / {kills}, partial files: {len(partials)}, mismatches: {len(mismatches)} "
        f"({episode} episodes, {time.time() - started:.0f} s)"
    )
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if survived == kills == args.kills and not partials and not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
