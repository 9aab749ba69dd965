"""Typed configs: one training+evaluation run (``RunConfig``) and a sweep of them (``SweepConfig``).

Every config is validated up front, before anything is trained or written: a bad value raises
``ConfigError`` whose message names the file and the dotted field, says what was wrong and how to fix it.

YAML keys mirror the libraries users already know: ``training:`` takes transformers' ``TrainingArguments``
names (``learning_rate``, ``per_device_train_batch_size``, ``max_steps``, ...), ``objective:`` takes the
objective's name and its parameters (``k``, ``tau``, ``beta`` for OTR), ``eval:`` names evaluation suites.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.toy import ToyConfig


class ConfigError(ValueError):
    """A config is invalid. ``str(err)`` is one line: where, what, how to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


LOCAL_DATA_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv"}


class DatasetConfig(_Strict):
    """Where the SFT data comes from and how an example becomes (prompt, response) text."""

    path: str = Field(
        description="Hub dataset name, local .json/.jsonl/.parquet file, or a toy ref 'toy:math/train'"
    )
    name: str | None = Field(None, description="Hub dataset config name")
    split: str = "train"
    prompt_field: str = "prompt"
    response_field: str = "response"
    template: Literal["plain", "chat"] = Field(
        "plain",
        description="plain: prompt_format/response_format strings; chat: the tokenizer's chat template",
    )
    prompt_format: str = Field(
        "{prompt}", description="plain template for the prompt; {prompt} = prompt_field"
    )
    response_format: str = Field(
        " {response}", description="plain template for the response; EOS is appended"
    )
    max_length: int = Field(512, gt=0, description="truncate prompt+response to this many tokens")
    max_examples: int | None = Field(None, gt=0, description="use only the first N examples")

    @field_validator("path")
    @classmethod
    def _local_file_exists(cls, v: str) -> str:
        # A path with a data-file suffix is a local file: check it now, not an hour into a sweep.
        if Path(v).suffix.lower() in LOCAL_DATA_SUFFIXES and not Path(v).is_file():
            raise ValueError(f"file not found: {v} (relative paths are relative to the current directory)")
        return v

    @field_validator("prompt_format")
    @classmethod
    def _has_prompt(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("must contain the placeholder {prompt}")
        return v

    @field_validator("response_format")
    @classmethod
    def _has_response(cls, v: str) -> str:
        if "{response}" not in v:
            raise ValueError("must contain the placeholder {response}")
        return v


class ObjectiveConfig(BaseModel):
    """``name`` selects the objective; every other key is one of its parameters (validated by the registry)."""

    model_config = ConfigDict(extra="allow")
    name: str = "sft"

    @model_validator(mode="after")
    def _validate_params(self) -> ObjectiveConfig:
        from harness import objectives

        objectives.validate_params(self.name, self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# Defaults of the DFT recipe (../shared/reference/otr.md §3), overridable in `training:`.
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "weight_decay": 0.01,
    "warmup_steps": 0.1,  # transformers 5: a float < 1 is a ratio of the total steps
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 1.0,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
}
# Set by the harness itself: a user value would silently break the run directory contract.
_RESERVED_TRAINING_KEYS = {"output_dir", "seed", "data_seed", "logging_dir", "run_name"}


def _training_argument_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


class EvalConfig(_Strict):
    """Which evaluation suites to run on the final checkpoint (see ``evaluation/suites/``)."""

    suites: list[str] = Field(default_factory=lambda: ["toy"])
    backend: Literal["hf"] = "hf"
    limit: int | None = Field(None, gt=0, description="evaluate only the first N documents of each task")
    batch_size: int = Field(32, gt=0)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field("auto", description="auto: cuda when available, else cpu")


class RunConfig(_Strict):
    """One fine-tuning run and its evaluation. ``objective: null`` means: no training, evaluate ``model``."""

    model: str = Field(description="Hub model name, local HF directory, or the toy base 'toy:base'")
    dataset: DatasetConfig | None = None
    objective: ObjectiveConfig | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    eval: EvalConfig = Field(default_factory=EvalConfig)
    toy: ToyConfig | None = Field(None, description="the toy world that 'toy:' refs point to")

    @field_validator("training")
    @classmethod
    def _check_training(cls, v: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(v) & _RESERVED_TRAINING_KEYS)
        if reserved:
            raise ValueError(f"'{reserved[0]}' is set by the harness (run directory, seed); remove it")
        unknown = sorted(set(v) - _training_argument_names())
        if unknown:
            raise ValueError(
                f"unknown TrainingArguments field '{unknown[0]}' (see transformers.TrainingArguments for valid names)"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.objective is not None and self.dataset is None:
            raise ValueError("a run with an objective needs a 'dataset'")
        uses_toy = self.model.startswith("toy:") or (
            self.dataset is not None and self.dataset.path.startswith("toy:")
        )
        if uses_toy and self.toy is None:
            self.toy = ToyConfig()
        if uses_toy:
            from harness.toy import valid_refs

            refs = [("model", self.model)] + ([("dataset.path", self.dataset.path)] if self.dataset else [])
            for field, ref in refs:
                if ref.startswith("toy:") and ref not in valid_refs(self.toy):
                    raise ValueError(
                        f"{field}: unknown toy reference '{ref}'; valid: {', '.join(valid_refs(self.toy))}"
                    )
        return self

    @property
    def is_training(self) -> bool:
        return self.objective is not None

    def training_arguments(self) -> dict[str, Any]:
        """TrainingArguments kwargs: recipe defaults overridden by ``training:`` (output_dir/seed added later)."""
        return {**TRAINING_DEFAULTS, **self.training}

    def method_label(self) -> str:
        """Short human label: 'base', 'sft', 'otr(k=16,tau=1.2,beta=-0.1)'."""
        if self.objective is None:
            return "base"
        p = self.objective.params
        if not p:
            return self.objective.name
        return self.objective.name + "(" + ",".join(f"{k}={p[k]}" for k in sorted(p)) + ")"

    def config_hash(self) -> str:
        """Content hash of the resolved config: the identity of a run (8 hex digits suffice per sweep)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


class SweepConfig(_Strict):
    """A sweep: a base run config expanded over ``variants`` × ``grid`` × ``seeds`` (+ the base model once)."""

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
    seeds: list[int] = Field(default_factory=lambda: [0])
    evaluate_base: bool = Field(True, description="also evaluate the untrained base model (once)")

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis '{key}' has no values; give at least one or remove the axis")
        return v

    @field_validator("seeds")
    @classmethod
    def _non_empty_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed")
        return v


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "objective":
            out[key] = _deep_merge(out[key], value)
        else:
            # An objective override replaces the whole block: otr's k must not leak into dft.
            out[key] = value
    return out


def _set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    out = dict(cfg)
    if rest:
        out[head] = _set_dotted(dict(out.get(head) or {}), rest, value)
    else:
        out[head] = value
    return out


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


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One planned run: its resolved config and a readable, unique directory name."""

    config: RunConfig
    variant: str  # 'base' for the untrained model

    @property
    def run_id(self) -> str:
        slug = re.sub(
            r"[^A-Za-z0-9_.-]+",
            "-",
            f"{self.variant}-s{self.config.seed}" if self.config.is_training else "base",
        )
        return f"{slug}-{self.config.config_hash()[:8]}"


def expand_sweep(sweep: SweepConfig, source: str = "<sweep>") -> list[RunSpec]:
    """Expand a sweep into RunSpecs (no side effects). Every run config is validated here."""
    base = dict(sweep.base)
    if sweep.toy is not None:
        base.setdefault("toy", sweep.toy.model_dump())
    variants = sweep.variants or {"run": {}}
    axes = list(sweep.grid.items())
    specs: list[RunSpec] = []
    if sweep.evaluate_base:
        base_cfg = {k: v for k, v in base.items() if k in {"model", "eval", "toy"}}
        specs.append(RunSpec(parse_run_config(base_cfg, source, "base"), "base"))
    for vname, override in variants.items():
        merged = _deep_merge(base, override)
        for combo in itertools.product(*(values for _, values in axes)):
            cfg = merged
            label = vname
            for (key, _), value in zip(axes, combo, strict=True):
                cfg = _set_dotted(cfg, key, value)
                label += f"-{key.rsplit('.', 1)[-1]}{value}"
            for seed in sweep.seeds:
                run_cfg = parse_run_config({**cfg, "seed": seed}, source, f"variants.{vname}")
                specs.append(RunSpec(run_cfg, label))
    ids = [s.run_id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(
            f"{source}: two runs resolve to the same config ({dupes[0]}); remove the duplicate variant"
        )
    return specs
