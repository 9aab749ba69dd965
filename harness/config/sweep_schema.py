"""Typed sweep file: ``SweepConfig`` (a base run config × variants × grid × zip groups × seeds) and its blocks.

Only the file's shape is checked here; every resolved run is validated as a ``RunConfig`` when the sweep
is expanded (``sweep.py``), and the ``lr_tuning`` selection task against its suite there too.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from harness.config.schema import _Strict
from harness.config.toy import ToyConfig

# sbatch options the slurm executor sets itself (per task output files, the array): not overridable.
_SLURM_MANAGED = {"array", "output", "error", "open-mode", "signal", "wckey"}


class SlurmConfig(_Strict):
    """Resources of the slurm executor: one array task per run, each running that run's pending stages.

    Field names follow sbatch (``--partition``, ``--time``, ...); ``additional_parameters`` passes any other
    sbatch option as is (``{mail-type: END, exclusive: true}``).
    """

    partition: str | None = None
    time: int | str = Field(
        60,
        description="time limit per task (one run: all its pending stages): minutes, or sbatch's "
        "'HH:MM:SS' / 'D-HH:MM:SS'",
    )
    cpus_per_task: int | None = Field(None, gt=0)
    gpus_per_node: int | None = Field(None, ge=0)
    mem: str | None = Field(None, description="memory per node as sbatch takes it, e.g. 64G or 500M")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int | None = Field(None, gt=0, description="at most this many tasks at once")
    setup: list[str] = Field(
        default_factory=list, description="shell lines run before each task (module load, venv activation)"
    )
    python: str | None = Field(None, description="interpreter on the compute nodes (default: this one)")
    additional_parameters: dict[str, str | int | bool] = Field(
        default_factory=dict, description="any other sbatch option, e.g. {mail-type: END}"
    )

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v <= 0:
                raise ValueError("must be a positive number of minutes")
            return v
        if not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", v):
            raise ValueError("expected minutes (60) or sbatch's 'HH:MM:SS' / 'D-HH:MM:SS' (e.g. '2:00:00')")
        return v

    @field_validator("mem")
    @classmethod
    def _slurm_mem(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d+[KMGT]?", v):
            raise ValueError(
                "expected a size as sbatch takes it: a number with an optional K/M/G/T suffix (64G)"
            )
        return v

    @field_validator("additional_parameters")
    @classmethod
    def _extra_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        named = {f.replace("_", "-") for f in cls.model_fields if f != "additional_parameters"}
        for key in v:
            flag = key.replace("_", "-")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", flag):
                raise ValueError(f"'{key}' is not an sbatch option name (e.g. mail-type)")
            if flag in named:
                raise ValueError(f"'{key}' has its own field: write slurm.{flag.replace('-', '_')} instead")
            if flag in _SLURM_MANAGED:
                raise ValueError(f"'{key}' is set by the harness (one array task per run, logs per run)")
        return v


class LrSelection(_Strict):
    """Where the learning rate is picked: a validation task of a suite (``split: val`` in the suite file)."""

    suite: str = Field(description="an evaluation suite every trained run evaluates")
    task: str = Field(description="a task of that suite with split: val")
    metric: str | None = Field(None, description="the task's primary metric (default: the suite's)")
    mode: Literal["max", "min"] = Field("max", description="max: higher is better (accuracy)")


class LrTuning(_Strict):
    """Per-method learning-rate tuning: every variant (and grid point) is run at every learning rate and
    seed; the report picks, per method, the lr with the best mean over seeds on the validation task and
    compares the methods at their picked lr on the test tasks."""

    learning_rates: list[float] = Field(description="the lr grid, e.g. [3.0e-4, 1.0e-3, 3.0e-3]")
    select: LrSelection

    @field_validator("learning_rates")
    @classmethod
    def _lr_grid(cls, v: list[float]) -> list[float]:
        if len(v) < 2:
            raise ValueError("give at least two learning rates (with one there is nothing to tune)")
        if any(lr <= 0 for lr in v):
            raise ValueError("learning rates must be > 0")
        if len(set(v)) != len(v):
            raise ValueError("learning rates must be distinct")
        return v


class SweepConfig(_Strict):
    """A sweep: a base run config expanded over ``variants`` × ``grid`` × ``zip`` groups × ``seeds`` (+ the base model once)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    output_dir: str | None = Field(None, description="default: runs/<name> under the current directory")
    toy: ToyConfig | None = None
    base: dict[str, Any] = Field(description="the RunConfig every run starts from")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named overrides, e.g. sft: {objective: {name: sft}}"
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted key -> values (cartesian product)"
    )
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list,
        description="groups of dotted key -> values; the axes of a group move together (equal lengths), "
        "groups combine cartesianly with each other and with `grid`",
    )
    seeds: list[int] = Field(default_factory=lambda: [0])
    evaluate_base: bool = Field(True, description="also evaluate the untrained base model (once)")
    lr_tuning: LrTuning | None = Field(
        None, description="per-method learning-rate tuning on a validation task (see LrTuning)"
    )
    slurm: SlurmConfig | None = Field(None, description="resources of `sweep run --executor slurm`")

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis '{key}' has no values; give at least one or remove the axis")
        return v

    @field_validator("zip")
    @classmethod
    def _zip_groups(cls, v: list[dict[str, list[Any]]], info: ValidationInfo) -> list[dict[str, list[Any]]]:
        seen = set(info.data.get("grid") or {})
        for i, group in enumerate(v):
            where = f"zip group {i} ({', '.join(group) or 'empty'})"
            if not group:
                raise ValueError(f"{where}: give at least one axis or remove the group")
            lengths = {key: len(values) for key, values in group.items()}
            if len(set(lengths.values())) != 1:
                shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
                raise ValueError(f"{where}: axes must have equal lengths (got {shown})")
            if 0 in lengths.values():
                raise ValueError(f"{where}: axes have no values; give at least one or remove the group")
            for key in group:
                if key in seen:
                    raise ValueError(f"{where}: axis '{key}' is already swept in `grid` or an earlier group")
                seen.add(key)
        return v

    @field_validator("seeds")
    @classmethod
    def _non_empty_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed")
        return v
