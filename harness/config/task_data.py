"""Where an lm-eval task reads its documents: ``eval.dataset_overrides`` (the data location, nothing else).

``eval: {dataset_overrides: {gsm8k_cot: {dataset_path: json, dataset_kwargs: {data_files: {test: /d/gsm8k.jsonl}}}}}``
evaluates lm-eval's own ``gsm8k_cot`` — its prompt, few-shot examples, filters, metrics and splits — on
the documents of another location: a local copy on a cluster without Hub access, a mirror, or stand-in
data of the same schema (the offline rehearsal of the paper sweeps, ``tests/test_rehearsal.py``).

A key is an lm-eval task or group name; a group's override applies to each of its tasks (a task's own
entry wins). The three location fields replace the task's together: ``dataset_path`` (a Hub name, or a
``datasets`` builder such as ``json`` / ``parquet`` / ``csv``), ``dataset_name`` (the Hub config; default
none) and ``dataset_kwargs`` (passed to ``datasets.load_dataset``, e.g. ``data_files`` keyed by the task's
own split names: ``test``, ``validation``, ``train``). ``harness.eval.task_data`` applies them through
lm-eval's task index (a task YAML that ``include:``s the original). Validated without lm-eval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# datasets' packaged builders that read local files: their data_files are checked to exist at plan time.
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}


class TaskDataLocation(BaseModel):
    """The data location of one lm-eval task (or of every task of a group)."""

    model_config = ConfigDict(extra="forbid")
    dataset_path: str = Field(description="Hub dataset name, or a datasets builder: json, parquet, csv")
    dataset_name: str | None = Field(None, description="the Hub dataset's config name (default: none)")
    dataset_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of datasets.load_dataset, e.g. {data_files: {test: /abs/test.jsonl}}",
    )

    @model_validator(mode="after")
    def _local_files_exist(self) -> TaskDataLocation:
        if self.dataset_path not in LOCAL_BUILDERS:
            return self
        files = self.dataset_kwargs.get("data_files")
        if not files:
            raise ValueError(
                f"dataset_path '{self.dataset_path}' reads local files: give dataset_kwargs.data_files, "
                "e.g. {test: /abs/path/test.jsonl} (keys: the task's split names)"
            )
        for path in _paths(files):
            if "*" not in path and "://" not in path and not Path(path).is_file():
                raise ValueError(
                    f"data file not found: {path} (relative paths are relative to the current directory; "
                    "lm-eval resolves them there too)"
                )
        return self

    def as_task_config(self) -> dict[str, Any]:
        """The three keys of an lm-eval task config this location sets."""
        return {
            "dataset_path": self.dataset_path,
            "dataset_name": self.dataset_name,
            "dataset_kwargs": dict(self.dataset_kwargs),
        }


def _paths(files: Any) -> list[str]:
    """Every path in a data_files value: a string, a list, or a mapping of split -> either."""
    if isinstance(files, str):
        return [files]
    if isinstance(files, list):
        return [p for f in files for p in _paths(f)]
    if isinstance(files, dict):
        return [p for f in files.values() for p in _paths(f)]
    return []
