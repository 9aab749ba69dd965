"""Every path of a sweep directory and a run directory: the contract between stages, spelled here only.

    <sweep dir>/
      sweep.yaml                     the sweep file as given (copied at `sweep run`)
      plan.json                      the planned run ids, in plan order
      slurm/<job>_<task>/            submitit's per-task logs (slurm executor only)
      <run id>/                      run id = <readable slug>-<config hash>
        meta.json                    variant, sweep name (and the lr-tuning group)
        config.yaml                  resolved, frozen RunConfig
        env.json                     git SHA, package versions, hardware
        logs/<stage>.log             stdout+stderr of each stage
        logs/slurm.json              slurm executor only: the array task that ran it, where its logs are
        run.lock                     flock held while a process executes the run (released on any exit)
        train/metrics.jsonl          one JSON line per logging step
        train/summary.json           compute accounting (wall time, tokens, peak memory)
        train/checkpoint-<step>/     Trainer checkpoints (+ harness_counters.json: complete when present)
        train/final/                 the fine-tuned model + tokenizer (HF format)
        train/adapter/               LoRA runs only: the adapter alone (train/final/ has it merged in)
        eval/<suite>/results.json    metric, stderr, n per task (+ the settings used)
        eval/<suite>/samples_<task>.jsonl   per-document logs (``samples_<task>@<i>.jsonl``: Avg@k run i)
        eval/logs/eval.log           ``otr-harness eval DIR`` only: its log
        status/<stage>.done | <stage>.failed (the failure's traceback)
        corrupt/<time>/<path>        outputs of a done stage that did not read back, set aside by ``sweep run``
                                     (``harness.runs.integrity``) before it redid the stage

A report directory holds results.csv, validation.csv, selection.csv, report.md, report.html (and
results.parquet when pyarrow is installed).

Every file is written atomically (``harness.runs.io``), so a killed process never leaves a half-written
file that a later stage could mistake for a result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from harness.runs.io import atomic_write_json, atomic_write_text

TRAIN, EVAL = "train", "eval"
STAGES = (TRAIN, EVAL)  # in execution order; the base model runs EVAL only

SWEEP_FILE = "sweep.yaml"
PLAN_FILE = "plan.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_PREFIX = "checkpoint-"
COUNTERS_FILE = "harness_counters.json"  # inside a checkpoint: the harness's token counters
RESULTS_FILE = "results.json"
CORRUPT_DIR = "corrupt"  # outputs that did not read back, kept for inspection (harness.runs.integrity)
# Inside a Hugging Face model directory (train/final, train/adapter): what integrity checks look for.
MODEL_CONFIG_FILES = ("config.json", "adapter_config.json")  # a model's / a LoRA adapter's config
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEX_SUFFIX = ".index.json"  # a sharded checkpoint's index: {"weight_map": {tensor: shard file}}
NOT_WEIGHTS = ("training_args.bin",)  # written by Trainer.save_model beside the weights
REPORT_FILES = {
    "csv": "results.csv",
    "validation": "validation.csv",
    "selection": "selection.csv",
    "md": "report.md",
    "html": "report.html",
    "parquet": "results.parquet",
}


def stages_for(is_training: bool) -> tuple[str, ...]:
    """The stages of a run: the base model (no training) is only evaluated."""
    return STAGES if is_training else (EVAL,)


def samples_file_name(task: str, run_index: int = 0) -> str:
    """``samples_<task>.jsonl``; Avg@k run i > 0: ``samples_<task>@<i>.jsonl``."""
    return f"samples_{task}.jsonl" if run_index == 0 else f"samples_{task}@{run_index}.jsonl"


_SAMPLES_RE = re.compile(r"samples_(?P<task>.+?)(?:@(?P<i>\d+))?\.jsonl")


def parse_samples_file_name(name: str) -> tuple[str, int] | None:
    """(task, run index) of a samples file name, or None for any other file."""
    m = _SAMPLES_RE.fullmatch(name)
    return None if m is None else (m["task"], int(m["i"] or 0))


def is_sweep_dir(path: Path) -> bool:
    """A directory that ``sweep run`` wrote (its plan) or that holds run directories."""
    path = Path(path)
    return (path / PLAN_FILE).exists() or any(path.glob(f"*/{CONFIG_FILE}"))


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


class SweepDir:
    """Paths of one sweep directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def sweep_file(self) -> Path:
        return self.path / SWEEP_FILE

    @property
    def plan_file(self) -> Path:
        return self.path / PLAN_FILE

    def sweep_mapping(self) -> dict[str, Any]:
        """The kept sweep file as a plain mapping, unvalidated ({} when missing or unreadable).

        For readers of finished sweeps (the report): a sweep written by an older version still reports.
        ``harness.config.load_sweep_config`` is the validating reader that planning uses.
        """
        try:
            data = yaml.safe_load(self.sweep_file.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def slurm_dir(self) -> Path:
        """submitit's folder; ``%j`` in a path is submitit's placeholder for the job id."""
        return self.path / "slurm"

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.path / run_id)

    def run_dirs(self) -> list[RunDir]:
        """Every run directory below the sweep directory (those with a frozen config), sorted by name."""
        return [RunDir(p.parent) for p in sorted(self.path.glob(f"*/{CONFIG_FILE}"))]


class RunDir:
    """Paths and status markers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    # --- layout -------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def meta_file(self) -> Path:
        return self.path / "meta.json"

    @property
    def env_file(self) -> Path:
        return self.path / "env.json"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def log_file(self, stage: str) -> Path:
        return self.logs_dir / f"{stage}.log"

    @property
    def slurm_file(self) -> Path:
        return self.logs_dir / "slurm.json"

    @property
    def train_dir(self) -> Path:
        return self.path / TRAIN

    @property
    def metrics_file(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.train_dir / "summary.json"

    @property
    def final_model(self) -> Path:
        return self.train_dir / "final"

    @property
    def adapter_dir(self) -> Path:
        return self.train_dir / "adapter"

    @property
    def eval_root(self) -> Path:
        return self.path / EVAL

    def eval_dir(self, suite: str) -> Path:
        return self.eval_root / suite

    def results_file(self, suite: str) -> Path:
        return self.eval_dir(suite) / RESULTS_FILE

    def samples_file(self, suite: str, task: str, run_index: int = 0) -> Path:
        return self.eval_dir(suite) / samples_file_name(task, run_index)

    @property
    def corrupt_dir(self) -> Path:
        """``corrupt/``: outputs that did not read back, moved aside before their stage was redone."""
        return self.path / CORRUPT_DIR

    @property
    def failure_dir(self) -> Path:
        """``status/``: the stage markers (``<stage>.done``, ``<stage>.failed`` with the traceback)."""
        return self.path / "status"

    def _marker(self, stage: str, kind: str) -> Path:
        assert stage in STAGES, stage
        return self.failure_dir / f"{stage}.{kind}"

    # --- config -------------------------------------------------------------------------------
    def write_config(self, config: Any) -> None:
        """Freeze the resolved RunConfig (a pydantic model) as YAML."""
        atomic_write_text(self.config_file, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    def read_config(self):
        """The frozen RunConfig (validated again: a hand-edited config fails here, naming the field)."""
        from harness.config import load_run_config

        return load_run_config(self.config_file)

    # --- status -------------------------------------------------------------------------------
    def is_done(self, stage: str) -> bool:
        return self._marker(stage, "done").exists()

    def is_failed(self, stage: str) -> bool:
        return self._marker(stage, "failed").exists()

    def mark_done(self, stage: str, info: dict[str, Any] | None = None) -> None:
        self._marker(stage, "failed").unlink(missing_ok=True)
        atomic_write_json(self._marker(stage, "done"), info or {})

    def mark_failed(self, stage: str, error: str) -> None:
        atomic_write_text(self._marker(stage, "failed"), error)

    def failure(self, stage: str) -> str | None:
        marker = self._marker(stage, "failed")
        return marker.read_text() if marker.exists() else None

    def clear_failure(self, stage: str) -> None:
        self._marker(stage, "failed").unlink(missing_ok=True)

    def clear_done(self, stage: str) -> None:
        """Forget that ``stage`` finished (its outputs did not read back: it must run again)."""
        self._marker(stage, "done").unlink(missing_ok=True)

    def status(self, stages: tuple[str, ...] = STAGES) -> str:
        """'done' when every stage is done, 'failed' when any failed, 'partial'/'pending' otherwise."""
        if all(self.is_done(s) for s in stages):
            return "done"
        if any(self.is_failed(s) for s in stages):
            return "failed"
        return "partial" if any(self.is_done(s) for s in stages) else "pending"


def checkpoint_dirs(train_dir: Path) -> list[Path]:
    """``train/checkpoint-<step>`` directories, oldest step first."""
    found = [p for p in Path(train_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    return sorted(found, key=lambda p: checkpoint_step(p) or -1)


def checkpoint_dir(train_dir: Path, step: int) -> Path:
    """``train/checkpoint-<step>`` (the name transformers' Trainer gives it)."""
    return Path(train_dir) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(path: Path) -> int | None:
    tail = Path(path).name.removeprefix(CHECKPOINT_PREFIX)
    return int(tail) if tail.isdigit() else None
