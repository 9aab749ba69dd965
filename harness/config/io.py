"""Reading configs from YAML, and the one-line ``ConfigError`` message of a pydantic error.

A message is ``<file>: field '<dotted.path>': <what was wrong>[ (got <value>)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.config.overrides import apply_overrides
from harness.config.schema import ConfigError, RunConfig
from harness.config.sweep_schema import SweepConfig


def _format_error(source: str, err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{source}: field '{loc}': {msg}{shown}"


def _source(path: str | Path, overrides: Sequence[str]) -> str:
    """How errors name a config: the file, and that --set changed it (the bad value may be an override)."""
    return f"{path} (with --set)" if overrides else str(path)


def effective_sweep_text(path: str | Path, overrides: Sequence[str]) -> str:
    """The sweep file as the overrides make it: what a sweep directory keeps, so that re-planning it
    (``sweep status``, ``report``, resume) needs neither the command line nor the original file."""
    if not overrides:
        return Path(path).read_text()
    data = apply_overrides(load_yaml(path), overrides, SweepConfig)
    header = f"# {path} with overrides:\n" + "".join(f"#   --set {o}\n" for o in overrides)
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_run_config(data: dict[str, Any], source: str = "<run config>", prefix: str = "") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(source, e, prefix)) from None


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """A run config file, with ``--set KEY=VALUE`` ``overrides`` applied (``harness.config.overrides``)."""
    return parse_run_config(apply_overrides(load_yaml(path), overrides, RunConfig), _source(path, overrides))


def load_sweep_config(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """A sweep file, with ``--set KEY=VALUE`` ``overrides`` applied (``harness.config.overrides``)."""
    data = apply_overrides(load_yaml(path), overrides, SweepConfig)
    path = _source(path, overrides)
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path), e)) from None
