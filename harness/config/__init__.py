"""Typed run and sweep configs: schemas, validation, sweep expansion, run ids. Never imports torch,
transformers or lm_eval: planning a sweep stays cheap (``tests/test_planning_imports.py``).

Modules, in import order (each imports only those after it): ``sweep`` (expansion, ``RunSpec``, run ids)
-> ``suites`` (evaluation suite files) -> ``io`` (YAML, error messages) -> ``sweep_schema`` (``SweepConfig``)
-> ``schema`` (``RunConfig`` and its blocks, ``ConfigError``) -> ``hashing`` (the run id's hash),
``toy`` (``ToyConfig``, ``toy:`` refs), ``training_args`` (the committed ``TrainingArguments`` table).
"""

from harness.config.hashing import _HASH_OMIT_AT_DEFAULT
from harness.config.io import _format_error, load_run_config, load_sweep_config, load_yaml, parse_run_config
from harness.config.schema import (
    LOCAL_DATA_SUFFIXES,
    TRAINING_DEFAULTS,
    ConfigError,
    DatasetConfig,
    EvalConfig,
    LauncherConfig,
    LoraConfig,
    ObjectiveConfig,
    RunConfig,
)
from harness.config.sweep import RunSpec, axis_label, expand_sweep
from harness.config.sweep_schema import LrSelection, LrTuning, SlurmConfig, SweepConfig
from harness.config.toy import ToyConfig

__all__ = [
    "LOCAL_DATA_SUFFIXES",
    "TRAINING_DEFAULTS",
    "ConfigError",
    "DatasetConfig",
    "EvalConfig",
    "LauncherConfig",
    "LoraConfig",
    "LrSelection",
    "LrTuning",
    "ObjectiveConfig",
    "RunConfig",
    "RunSpec",
    "SlurmConfig",
    "SweepConfig",
    "ToyConfig",
    "_HASH_OMIT_AT_DEFAULT",
    "_format_error",
    "axis_label",
    "expand_sweep",
    "load_run_config",
    "load_sweep_config",
    "load_yaml",
    "parse_run_config",
]
