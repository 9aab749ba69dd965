"""The run directory: the contract between stages. Its layout is defined here and nowhere else.

    <sweep dir>/
      sweep.yaml                     the sweep file as given (copied at `sweep run`)
      <run id>/                      run id = <readable slug>-<config hash>
        config.yaml                  resolved, frozen RunConfig
        env.json                     git SHA, package versions, hardware
        logs/<stage>.log             stdout+stderr of each stage
        logs/slurm.json              slurm executor only: the array task that ran it, where its logs are
        run.lock                     flock held while a process executes the run (released on any exit)
        train/metrics.jsonl          one JSON line per logging step
        train/summary.json           compute accounting (wall time, tokens, peak memory)
        train/final/                 the fine-tuned model + tokenizer (HF format)
        train/adapter/               LoRA runs only: the adapter alone (train/final/ has it merged in)
        eval/<suite>/results.json    metric, stderr, n per task (+ the settings used)
        eval/<suite>/samples_<task>.jsonl   per-document logs
        status/<stage>.done | <stage>.failed (the failure's traceback)

Every file is written atomically (temp file in the same directory, then ``os.replace``), so a killed
process never leaves a half-written file that a later stage could mistake for a result.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

STAGES = ("train", "eval")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            import shutil

            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        return self.path / "config.yaml"

    @property
    def env_file(self) -> Path:
        return self.path / "env.json"

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def metrics_file(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.train_dir / "summary.json"

    @property
    def final_model(self) -> Path:
        return self.train_dir / "final"

    def eval_dir(self, suite: str) -> Path:
        return self.path / "eval" / suite

    def log_file(self, stage: str) -> Path:
        return self.path / "logs" / f"{stage}.log"

    def _marker(self, stage: str, kind: str) -> Path:
        assert stage in STAGES, stage
        return self.path / "status" / f"{stage}.{kind}"

    # --- config -------------------------------------------------------------------------------
    def write_config(self, config: Any) -> None:
        """Freeze the resolved RunConfig (a pydantic model) as YAML."""
        atomic_write_text(self.config_file, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    def read_config(self):
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

    def status(self, stages: tuple[str, ...] = STAGES) -> str:
        """'done' when every stage is done, 'failed' when any failed, 'running'/'pending' otherwise."""
        if all(self.is_done(s) for s in stages):
            return "done"
        if any(self.is_failed(s) for s in stages):
            return "failed"
        return "partial" if any(self.is_done(s) for s in stages) else "pending"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (the writer was killed mid-line) is ignored."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
