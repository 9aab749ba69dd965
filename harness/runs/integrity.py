"""What it means that a stage's output reads back, per stage, and what to do with one that does not.

A stage is done when its marker (``status/<stage>.done``) exists *and* what it wrote reads back. Every file
is written atomically (``harness.runs.io``), so a disagreement between the two comes from outside the
harness: a full disk, a killed ``cp``/``rsync`` of a run directory, a hand edit, a failing drive. Such a run
is ``corrupt``; ``sweep status`` names the file, ``sweep run`` moves the file aside (``set_aside``: into
``<run>/corrupt/<time>/``, for inspection) and redoes the stage, and the report names the run instead of
averaging around it.

What "reads back" means (``stage_problems``):

* ``train``: ``train/summary.json`` is whole JSON; with ``model=True`` also the final model
  (``train/final/``, and ``train/adapter/`` when it exists): its config file is whole JSON, it has weights,
  every safetensors file is as long as its own header says (a truncated file is shorter), every ``.bin``
  file is a readable zip archive, every shard a ``*.index.json`` names is present. Cheap: headers and
  sizes, never the tensors.
* ``eval``: for every suite of the run (``eval.suites`` of its config.yaml), ``eval/<suite>/results.json``
  is whole JSON with a non-empty ``tasks`` mapping whose every entry has a numeric ``value``, and the
  per-document logs of every task it lists (``samples_<task>.jsonl``; one per subtask of a group and per
  run of Avg@k) are present and end in a whole line.

Each check returns ``Problem`` records (run, stage, the file, why), never raises for a damaged file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

from harness.runs.layout import (
    EVAL,
    MODEL_CONFIG_FILES,
    NOT_WEIGHTS,
    TRAIN,
    WEIGHT_INDEX_SUFFIX,
    WEIGHT_SUFFIXES,
    RunDir,
)

# A JSON file up to this size is parsed whole; a larger one (a real tokenizer.json) only has its end checked.
_PARSE_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class Problem:
    """One output of a stage that does not read back."""

    run: RunDir
    stage: str
    path: Path  # the file (or directory) that is missing or damaged
    reason: str  # one line: what is wrong with it
    aside: Path  # what ``set_aside`` moves away so that the stage is redone (the file, or its suite dir)

    @property
    def relpath(self) -> str:
        """The file, relative to the run directory."""
        try:
            return self.path.relative_to(self.run.path).as_posix()
        except ValueError:
            return str(self.path)

    def line(self) -> str:
        """``<run id> [<stage>]: <file>: <reason>`` — how status, run and report name it."""
        return f"{self.run.run_id} [{self.stage}]: {self.relpath}: {self.reason}"


# ------------------------------------------------------------------------------------------ files
def json_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole JSON document (missing, empty, unparsable), or None."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    try:
        if size > _PARSE_LIMIT:  # too big to parse on every status call: a truncated one lacks its end
            with path.open("rb") as f:
                f.seek(max(0, size - 64))
                tail = f.read().rstrip()
            return None if tail.endswith((b"}", b"]")) else "truncated (it does not end in } or ])"
        json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError) as e:
        return f"unreadable ({e})"
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}, byte {e.pos} of {size})"
    return None


def jsonl_problem(path: Path) -> str | None:
    """Why a JSON-lines log is missing or cut off (its last line not whole), or None. Only the end is read."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return None  # a task without documents logs nothing
    with path.open("rb") as f:
        f.seek(max(0, size - (1 << 16)))
        tail = f.read()
    if not tail.endswith(b"\n"):
        torn = len(tail.rsplit(b"\n", 1)[-1])
        return f"truncated (the last line, from byte {size - torn} of {size}, is not whole)"
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        json.loads(last)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "its last line is not valid JSON"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole: its 8-byte header length, JSON header and the tensors' byte
    ranges must add up to the file's size exactly (a truncated file is shorter). None when it does."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes, no header)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"truncated (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"unreadable safetensors header ({e})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"truncated ({size} bytes; its header says {expected})"
    return None


def _bin_problem(path: Path) -> str | None:
    """A torch ``.bin`` is a zip archive (since torch 1.6): truncation destroys its central directory."""
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a readable torch archive ({e})"


def model_dir_problems(directory: Path) -> list[tuple[Path, str]]:
    """(file, reason) for each part of a Hugging Face model (or LoRA adapter) directory that is not whole."""
    directory = Path(directory)
    if not directory.is_dir():
        return [(directory, "missing")]
    out: list[tuple[Path, str]] = []
    configs = [directory / name for name in MODEL_CONFIG_FILES if (directory / name).exists()]
    if not configs:
        out.append((directory / MODEL_CONFIG_FILES[0], "missing"))
    for path in sorted(directory.glob("*.json")):  # configs, tokenizer files, shard indexes
        problem = json_problem(path)
        if problem:
            out.append((path, problem))
    binaries = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    weights = [p for p in binaries if p.name not in NOT_WEIGHTS]
    if not weights:
        out.append((directory, f"no weights (no {' or '.join('*' + s for s in WEIGHT_SUFFIXES)} file)"))
    for path in binaries:
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else _bin_problem(path)
        if problem:
            out.append((path, problem))
    for index in sorted(directory.glob(f"*{WEIGHT_INDEX_SUFFIX}")):
        try:
            shards = set((json.loads(index.read_text()).get("weight_map") or {}).values())
        except (OSError, json.JSONDecodeError, AttributeError):
            continue  # reported above as not valid JSON
        for shard in sorted(shards - {p.name for p in weights}):
            out.append((directory / shard, f"missing (listed in {index.name})"))
    return out


# ----------------------------------------------------------------------------------------- stages
def train_problems(run: RunDir, *, model: bool = True) -> list[Problem]:
    """What the train stage wrote that does not read back: the summary, and with ``model`` the final model."""
    out = []
    problem = json_problem(run.summary_file)
    if problem:
        out.append(Problem(run, TRAIN, run.summary_file, problem, run.summary_file))
    if model:
        for directory in (run.final_model, run.adapter_dir):
            if directory == run.adapter_dir and not directory.exists():
                continue  # only LoRA runs have one
            out += [Problem(run, TRAIN, p, why, p) for p, why in model_dir_problems(directory)]
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def suite_problems(run: RunDir, suite: str) -> list[Problem]:
    """What one suite's evaluation wrote that does not read back (``eval/<suite>/``)."""
    directory, results_file = run.eval_dir(suite), run.results_file(suite)

    def problem(path: Path, why: str) -> Problem:
        return Problem(run, EVAL, path, why, directory)

    why = json_problem(results_file)
    if why:
        return [problem(results_file, why)]
    try:
        results = json.loads(results_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):  # a huge file whose end looked whole
        return [problem(results_file, "not valid JSON")]
    tasks = results.get("tasks") if isinstance(results, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        return [problem(results_file, "has no 'tasks' (no result of any task)")]
    out = []
    for task, record in tasks.items():
        if not isinstance(record, dict) or not _number(record.get("value")):
            out.append(problem(results_file, f"task '{task}' has no numeric 'value'"))
            continue
        leaves = record.get("subtasks") or [task]
        k = len(record["runs"]) if isinstance(record.get("runs"), list) and record["runs"] else 1
        for leaf in leaves:
            for i in range(k):
                path = run.samples_file(suite, str(leaf), i)
                why = jsonl_problem(path)
                if why:
                    out.append(problem(path, why))
    return out


@functools.lru_cache(maxsize=256)
def suite_dir_name(suite: str) -> str:
    """The directory a suite's results go to: the ``name`` of its suite file (the suite may be given as a
    file path); the given string when the file cannot be read (then the stage itself reports why)."""
    from harness.config import ConfigError
    from harness.config.suites import load_suite

    try:
        return load_suite(suite).name
    except (ConfigError, OSError):
        return suite


def configured_suites(run: RunDir) -> list[str]:
    """The suites the run's frozen config evaluates (``eval.suites``; its default when unset)."""
    from harness.config import EvalConfig

    try:
        cfg = yaml.safe_load(run.config_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    suites = (cfg.get("eval") or {}).get("suites") if isinstance(cfg, dict) else None
    if not isinstance(suites, list) or not suites:
        suites = EvalConfig.model_fields["suites"].default_factory()
    return [suite_dir_name(str(s)) for s in suites]


def eval_problems(run: RunDir, suites: list[str] | None = None) -> list[Problem]:
    """What the eval stage wrote that does not read back, for every suite of the run (directory names)."""
    suites = configured_suites(run) if suites is None else suites
    return [p for suite in suites for p in suite_problems(run, suite)]


def stage_problems(
    run: RunDir, stage: str, suites: list[str] | None = None, *, model: bool = True
) -> list[Problem]:
    """What ``stage`` wrote that does not read back (whether or not it is marked done)."""
    return train_problems(run, model=model) if stage == TRAIN else eval_problems(run, suites)


def run_problems(
    run: RunDir, stages: tuple[str, ...], suites: list[str] | None = None, *, model: bool = True
) -> list[Problem]:
    """The problems of every stage of ``stages`` that is marked done (a stage not done has nothing to check)."""
    return [p for s in stages if run.is_done(s) for p in stage_problems(run, s, suites, model=model)]


def run_status(
    run: RunDir, stages: tuple[str, ...], suites: list[str] | None = None, *, model: bool = True
) -> tuple[str, list[Problem]]:
    """The run's status with its problems: ``corrupt`` when a done stage's output does not read back,
    else ``RunDir.status`` (done / failed / partial / pending) and no problems."""
    problems = run_problems(run, stages, suites, model=model)
    return ("corrupt" if problems else run.status(stages)), problems


# ------------------------------------------------------------------------------------------ repair
def set_aside(problems: list[Problem], stamp: str | None = None) -> list[tuple[Path, Path]]:
    """Move what each problem names aside into ``<run>/corrupt/<stamp>/<same relative path>`` and mark its
    stage not done, so that the next execution redoes it. Returns (from, to) per move.

    Only call this holding the run's lock (``execution.stages``). An evaluation suite is moved as a whole
    directory (results and samples belong together); a training output, the damaged file alone (the
    stage rewrites everything else).
    """
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    moved: list[tuple[Path, Path]] = []
    for p in problems:
        p.run.clear_done(p.stage)
        if not p.aside.exists() or any(p.aside == src or p.aside.is_relative_to(src) for src, _ in moved):
            continue
        dest = p.run.corrupt_dir / stamp / p.aside.relative_to(p.run.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p.aside), str(dest))
        moved.append((p.aside, dest))
    return moved
