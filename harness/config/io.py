"""Reading configs from YAML, and the one-line ``ConfigError`` message of a pydantic error.

A message is ``<file>: field '<dotted.path>': <what was wrong>[ (got <value>)]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.config.schema import ConfigError, RunConfig
from harness.config.sweep_schema import SweepConfig


def _format_error(source: str, err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{source}: field '{loc}': {msg}{shown}"


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


def load_run_config(path: str | Path) -> RunConfig:
    return parse_run_config(load_yaml(path), str(path))


def load_sweep_config(path: str | Path) -> SweepConfig:
    data = load_yaml(path)
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path), e)) from None
