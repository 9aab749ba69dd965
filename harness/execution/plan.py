"""Plan a sweep: a sweep file into the runs it means, and each run's status on disk (no side effects).

``plan(FILE)`` validates and expands the sweep (``harness.config``: no torch, transformers or lm-eval is
imported, so re-planning even a 10,000-run grid takes a second or two) and looks at, but never touches,
the run directories. A run whose stages are marked done but whose outputs do not read back is ``corrupt``
(``harness.runs.integrity``; ``PlannedRun.check`` names the files). Executing the plan is
``harness.execution.sweep``'s job.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

from harness.config import RunSpec, SweepConfig, expand_sweep, load_sweep_config
from harness.runs import integrity
from harness.runs.layout import RunDir, SweepDir, stages_for


def stages_of(spec: RunSpec) -> tuple[str, ...]:
    """The base model is only evaluated; every other run is trained, then evaluated."""
    return stages_for(spec.config.is_training)


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
    def suites(self) -> list[str]:
        """The directories (``eval/<suite>``) this run's evaluation writes."""
        return [integrity.suite_dir_name(s) for s in self.spec.config.eval.suites]

    def check(self) -> tuple[str, list[integrity.Problem]]:
        """(status, problems): ``corrupt`` with the files when a done stage's output does not read back,
        else done / failed / partial / pending and no problems. Reads the run directory every call."""
        return integrity.run_status(self.run, self.stages, self.suites)

    @property
    def status(self) -> str:
        return self.check()[0]


@dataclasses.dataclass
class Plan:
    sweep: SweepConfig
    source: Path
    out_dir: Path
    runs: list[PlannedRun]
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, applied to the file (harness.config.overrides)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts


def plan(sweep_file: str | Path, out_dir: str | Path | None = None, overrides: Sequence[str] = ()) -> Plan:
    """Validate and expand a sweep file, with ``--set KEY=VALUE`` ``overrides`` applied; look at (but
    never touch) the run directories."""
    sweep = load_sweep_config(sweep_file, overrides)
    specs = expand_sweep(sweep, f"{sweep_file} (with --set)" if overrides else str(sweep_file))
    out = Path(out_dir or sweep.output_dir or Path("runs") / sweep.name)
    return Plan(sweep, Path(sweep_file), out, [PlannedRun(s, out) for s in specs], tuple(overrides))


def load_plan_from_dir(sweep_dir: str | Path) -> Plan:
    """Re-plan a sweep from the copy of its file kept in the sweep directory."""
    sweep_dir = Path(sweep_dir)
    source = SweepDir(sweep_dir).sweep_file
    if not source.is_file():
        raise FileNotFoundError(
            f"{sweep_dir}: not a sweep directory (no {source.name}); run 'otr-harness sweep run' first"
        )
    return plan(source, sweep_dir)
