"""Typed configs: one training+evaluation run (``RunConfig``) and a sweep of them (``SweepConfig``).

Every config is validated up front, before anything is trained or written: a bad value raises
``ConfigError`` whose message names the file and the dotted field, says what was wrong and how to fix it.

YAML keys mirror the libraries users already know: ``training:`` takes transformers' ``TrainingArguments``
names (``learning_rate``, ``per_device_train_batch_size``, ``max_steps``, ...), ``objective:`` takes the
objective's name and its parameters (``k``, ``tau``, ``beta`` for OTR), ``eval:`` names evaluation suites.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
    messages_field: str | None = Field(
        None,
        description="chat data: a field holding a list of {role, content} messages; the prompt is every "
        "message before the LAST assistant message, rendered with the chat template (generation prompt "
        "added), the response is that message's content + EOS. Replaces prompt_field/response_field.",
    )
    chat_template: str | None = Field(
        None,
        description="a Jinja chat template to use instead of the tokenizer's (base models often lack one); "
        "saved with the fine-tuned model's tokenizer",
    )
    packing: bool = Field(
        False,
        description="padding-free packing: each micro-batch is concatenated into one row with position_ids "
        "restarting per example (transformers' DataCollatorWithFlattening), so attention never crosses "
        "examples; per-token objectives are unchanged. Needs loss_normalization: tokens",
    )

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

    @model_validator(mode="after")
    def _messages_use_chat(self) -> DatasetConfig:
        explicit_plain = self.template == "plain" and "template" in self.model_fields_set
        if self.messages_field is not None and explicit_plain:
            raise ValueError(
                "messages_field is rendered with the chat template; remove 'template: plain' (or the "
                "messages_field)"
            )
        return self


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


@functools.cache
def _training_argument_names() -> frozenset[str]:
    # Cached: called once per run config, and a 10,000-run sweep must plan in well under 2 s.
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


class EvalConfig(_Strict):
    """Which evaluation suites to run on the final checkpoint (see ``evaluation/suites/``), and how.

    Generation settings (chat template, few-shot, temperature, samples per question) belong to the suite
    entries (``evaluation/suites/*.yaml``); this block says which engine runs them.
    """

    suites: list[str] = Field(default_factory=lambda: ["toy"])
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto",
        description="auto: vllm when CUDA and a vLLM interpreter are available, else hf; vllm runs the "
        "stage with the vLLM venv's python (`make vllm`, or $OTR_HARNESS_VLLM_PYTHON)",
    )
    limit: int | None = Field(None, gt=0, description="evaluate only the first N documents of each task")
    batch_size: int = Field(32, gt=0)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field("auto", description="hf backend: auto = cuda when available, else cpu")
    tensor_parallel_size: int = Field(1, gt=0, description="vllm: GPUs per model replica")
    data_parallel_size: int = Field(1, gt=0, description="vllm: model replicas (lm-eval uses ray for >1)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm: fraction of GPU memory")
    max_model_len: int | None = Field(None, gt=0, description="vllm: context length (default: the model's)")
    model_args: dict[str, Any] = Field(
        default_factory=dict, description="extra lm-eval model_args for the backend, passed through as is"
    )
    allow_unsafe_code: bool = Field(
        False,
        description="run tasks that execute model-generated code (lm-eval's confirm_run_unsafe_code); "
        "without it a suite with such a task fails before the model is loaded",
    )
    cache: bool = Field(True, description="reuse results of identical evaluations (harness/eval_cache.py)")


class LoraConfig(_Strict):
    """Optional LoRA adapters (peft). Names follow ``peft.LoraConfig`` (``alpha`` = ``lora_alpha``).

    Only the adapters are trained and checkpointed; the final model (``train/final/``) is the base with the
    adapters merged in, a plain HF model directory that lm-eval and vLLM load as they are. The adapter
    alone is kept in ``train/adapter/``.
    """

    r: int = Field(16, gt=0, description="adapter rank")
    alpha: int = Field(32, gt=0, description="scaling numerator (lora_alpha): the update is alpha / r * BA")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module names (or name suffixes) to adapt, e.g. [q_proj, v_proj]; 'all-linear' = every "
        "linear layer but the output head",
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = Field(
        None, description="modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head]"
    )
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r)")

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one module name, or 'all-linear'")
        return v


class LauncherConfig(_Strict):
    """Multi-process training: the train stage runs under ``accelerate launch`` (DDP, FSDP, DeepSpeed —
    whatever the accelerate config file says; the harness passes it through)."""

    accelerate_config: str | None = Field(
        None,
        description="an accelerate config YAML (`accelerate config` writes one); default: accelerate's own "
        "default config",
    )
    num_processes: int | None = Field(None, gt=0, description="overrides the config file's num_processes")
    main_process_port: int | None = Field(
        None, gt=0, lt=65536, description="rendezvous port; give each concurrent run on a node its own"
    )
    extra_args: list[str] = Field(
        default_factory=list, description="more `accelerate launch` options, e.g. [--mixed_precision, bf16]"
    )

    @field_validator("accelerate_config")
    @classmethod
    def _config_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"file not found: {v} (relative paths are relative to the current directory)")
        return v


# (dotted path in RunConfig.model_dump(), default): omitted from config_hash() while at that default.
_HASH_OMIT_AT_DEFAULT: list[tuple[tuple[str, ...], Any]] = [
    (("loss_normalization",), "tokens"),
    (("dataset", "messages_field"), None),
    (("dataset", "chat_template"), None),
    (("dataset", "packing"), False),
    (("lora",), None),
    (("launcher",), None),
    (("model_dtype",), "float32"),
    (("attn_implementation",), None),
    (("eval", "tensor_parallel_size"), 1),
    (("eval", "data_parallel_size"), 1),
    (("eval", "gpu_memory_utilization"), 0.9),
    (("eval", "max_model_len"), None),
    (("eval", "model_args"), {}),
    (("eval", "allow_unsafe_code"), False),
    (("eval", "cache"), True),
]
# (dotted path, value, hashed as): `eval.backend` defaulted to "hf" before "auto" existed; "auto" is
# hashed as "hf" so that existing run ids did not change.
_HASH_LEGACY_VALUES: list[tuple[tuple[str, ...], Any, Any]] = [
    (("eval", "backend"), "auto", "hf"),
]


class RunConfig(_Strict):
    """One fine-tuning run and its evaluation. ``objective: null`` means: no training, evaluate ``model``."""

    model: str = Field(description="Hub model name, local HF directory, or the toy base 'toy:base'")
    dataset: DatasetConfig | None = None
    objective: ObjectiveConfig | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    loss_normalization: Literal["tokens", "sequences"] = Field(
        "tokens",
        description="tokens (default, otr.md §2): the SUM of the per-token losses divided by the number of "
        "response tokens of the whole optimizer step (all accumulation micro-batches, all devices); "
        "sequences: the mean over each sequence's response tokens, then the mean over the sequences of the "
        "optimizer step that have at least one response token (all micro-batches, all devices)",
    )
    seed: int = 0
    eval: EvalConfig = Field(default_factory=EvalConfig)
    toy: ToyConfig | None = Field(None, description="the toy world that 'toy:' refs point to")
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="dtype the weights are loaded (and trained) in; for bf16 mixed precision keep float32 "
        "and set training.bf16: true",
    )
    attn_implementation: str | None = Field(
        None, description="passed to from_pretrained, e.g. sdpa, eager, flash_attention_2 (default: model's)"
    )
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of all weights")
    launcher: LauncherConfig | None = Field(
        None, description="run the train stage under `accelerate launch` (multi-GPU, FSDP, DeepSpeed)"
    )

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
        if self.dataset is not None and self.dataset.packing and self.loss_normalization == "sequences":
            # A packed row holds several examples: per-sequence means would need their boundaries.
            raise ValueError(
                "dataset.packing needs loss_normalization: tokens (sequences averages per example, and a "
                "packed row mixes examples); drop one of the two"
            )
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
        data = self.model_dump(mode="json")
        # Fields added after the first release are left out while at their default, so that adding them
        # did not change the identity (the directory) of existing runs.
        for path, default in _HASH_OMIT_AT_DEFAULT:
            parent = data
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and parent.get(path[-1], default) == default:
                parent.pop(path[-1], None)
        for path, value, hashed_as in _HASH_LEGACY_VALUES:
            parent = data
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and parent.get(path[-1]) == value:
                parent[path[-1]] = hashed_as
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


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
    variant: str  # 'base' for the untrained model; '<variant>-<axis><value>...' for grid/zip points
    # With lr_tuning: the method whose learning rate is tuned (the variant label without the lr).
    tuning_group: str | None = None

    @functools.cached_property
    def run_id(self) -> str:
        # Cached: the config is never mutated after planning, and hashing it is the bulk of planning time.
        label = f"{self.variant}-s{self.config.seed}" if self.config.is_training else "base"
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:_MAX_SLUG]
        return f"{slug}-{self.config.config_hash()[:8]}"


_MAX_SLUG = 80  # the hash keeps ids unique; the slug is for people, and file names have limits
# Short axis names for slugs; any other dotted key is shown by its last component.
_AXIS_ABBREV = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "bs",
    "gradient_accumulation_steps": "ga",
    "max_steps": "steps",
    "num_train_epochs": "epochs",
    "weight_decay": "wd",
    "warmup_steps": "warmup",
    "max_length": "len",
    "max_examples": "n",
}


def _slug_value(value: Any) -> str:
    """A short readable rendering of a grid value: 0.001 -> '0.001', 5e-05 -> '5e-5', {name: otr, k: 4} -> 'otr_k4'."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        text = repr(value)
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], text)
    if isinstance(value, dict):
        return "_".join(_slug_value(v) if k == "name" else f"{k}{_slug_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "_".join(_slug_value(v) for v in value)
    return str(value)


def axis_label(key: str, value: Any) -> str:
    """The slug fragment of one swept value: ('training.learning_rate', 1e-3) -> 'lr0.001'."""
    last = key.rsplit(".", 1)[-1]
    return f"{_AXIS_ABBREV.get(last, last)}{_slug_value(value)}"


def _points(sweep: SweepConfig) -> list[list[tuple[str, Any]]]:
    """Every point of grid x zip groups, as a list of (dotted key, value) assignments, in file order."""
    groups: list[list[list[tuple[str, Any]]]] = [
        [[(key, v)] for v in values] for key, values in sweep.grid.items()
    ]
    for group in sweep.zip:
        keys = list(group)
        groups.append([list(zip(keys, vals, strict=True)) for vals in zip(*group.values(), strict=True)])
    if sweep.lr_tuning is not None:  # the tuned lr is the innermost axis: a method's lrs sit together
        groups.append([[(_LR_KEY, lr)] for lr in sweep.lr_tuning.learning_rates])
    return [[a for part in combo for a in part] for combo in itertools.product(*groups)]


_LR_KEY = "training.learning_rate"


@functools.cache
def _training_adapter(name: str) -> Any:
    """A pydantic validator of one TrainingArguments field's annotated type (None for unknown names)."""
    import typing

    from pydantic import TypeAdapter
    from transformers import TrainingArguments

    hint = typing.get_type_hints(TrainingArguments).get(name)
    return None if hint is None else TypeAdapter(hint)


def _check_training_types(training: Any, source: str, where: Callable[[str], str]) -> None:
    """Type-check ``training:`` values against TrainingArguments' annotations at plan time, not at step 0.

    A string where the field takes no string is rejected even when it would parse: YAML reads ``1e-3``
    (no dot) as the string '1e-3', which TrainingArguments would pass on to the optimizer as is. Values are
    not rewritten, so run ids (config hashes) stay what they were.
    """
    if not isinstance(training, dict):
        return  # RunConfig reports a non-mapping `training`
    for key, value in training.items():
        try:
            problem = _training_value_problem(key, value)
        except TypeError:  # unhashable (a dict or list value): not cached
            problem = _training_value_problem.__wrapped__(key, value)
        if problem:
            raise ConfigError(f"{source}: field '{where(key)}': {problem}")


@functools.lru_cache(maxsize=65536, typed=True)
def _training_value_problem(key: Any, value: Any) -> str | None:
    """What is wrong with one ``training:`` value, or None. Cached: a 10,000-run grid repeats its values."""
    adapter = _training_adapter(key) if isinstance(key, str) else None
    if adapter is None:
        return None  # unknown names: RunConfig's validator names them
    try:
        adapter.validate_python(value, strict=isinstance(value, str))
    except ValidationError as e:
        expected = e.errors()[0]["msg"].removeprefix("Input should be ")
        hint = " (YAML reads 1e-3 as a string: write 1.0e-3)" if isinstance(value, str) else ""
        return f"expected {expected}, got {value!r}{hint}"
    return None


def _check_lr_tuning(sweep: SweepConfig, source: str) -> None:
    """The lr must come from lr_tuning alone, and the selection task must be a validation task."""
    tuning = sweep.lr_tuning
    if tuning is None:
        return
    swept = [f"grid.{_LR_KEY}"] if _LR_KEY in sweep.grid else []
    swept += [f"zip.{i}.{_LR_KEY}" for i, g in enumerate(sweep.zip) if _LR_KEY in g]
    swept += [
        f"variants.{name}.training.learning_rate"
        for name, override in sweep.variants.items()
        if "learning_rate" in (override.get("training") or {})
    ]
    if swept:
        raise ConfigError(
            f"{source}: field '{swept[0]}': the learning rate is tuned by lr_tuning.learning_rates; "
            "remove it here (or remove lr_tuning)"
        )
    from harness.config.suites import load_suite  # lazy: suites imports schema

    sel = tuning.select
    try:
        suite = load_suite(sel.suite)
    except ConfigError as e:
        raise ConfigError(f"{source}: field 'lr_tuning.select.suite': {e}") from None
    task = next((t for t in suite.tasks if t.task == sel.task), None)
    if task is None:
        known = ", ".join(t.task for t in suite.tasks)
        raise ConfigError(
            f"{source}: field 'lr_tuning.select.task': suite '{sel.suite}' has no task '{sel.task}' (has: {known})"
        )
    if task.split != "val":
        raise ConfigError(
            f"{source}: field 'lr_tuning.select.task': '{sel.task}' is a test task (split: {task.split}); "
            "select on a validation task (split: val in the suite file) so test scores stay unseen"
        )
    if sel.metric is not None and sel.metric != task.metric:
        raise ConfigError(
            f"{source}: field 'lr_tuning.select.metric': '{sel.task}' reports '{task.metric}' (its primary "
            f"metric in suite '{sel.suite}'), not '{sel.metric}'"
        )


def expand_sweep(sweep: SweepConfig, source: str = "<sweep>") -> list[RunSpec]:
    """Expand a sweep into RunSpecs (no side effects). Every run config is validated here.

    With ``lr_tuning``, every variant × grid point is expanded over the tuned learning rates too; the runs
    of one method share its ``tuning_group`` (the label without the lr), and each must evaluate the
    selection suite.
    """
    _check_lr_tuning(sweep, source)
    base = dict(sweep.base)
    variants = sweep.variants or {"run": {}}
    points = _points(sweep)
    if sweep.toy is not None:
        # The validated (frozen) ToyConfig itself, not its dump: pydantic does not re-validate a model
        # instance, and validating the same toy block for each of 10,000 runs was a third of planning.
        # Unless something edits it per run: then its fields must merge as a plain mapping.
        edited = any("toy" in (o or {}) for o in variants.values()) or any(
            key == "toy" or key.startswith("toy.") for point in points for key, _ in point
        )
        base.setdefault("toy", sweep.toy.model_dump() if edited else sweep.toy)
    specs: list[RunSpec] = []
    if sweep.evaluate_base:
        base_cfg = {k: v for k, v in base.items() if k in {"model", "eval", "toy"}}
        specs.append(RunSpec(parse_run_config(base_cfg, source, "base"), "base"))
    swept_blocks = {key.partition(".")[0] for point in points for key, _ in point}
    for vname, override in variants.items():
        merged = _deep_merge(base, override)
        # Blocks that no axis touches are the same for every point of this variant: validate each once
        # and hand pydantic the instance (it does not re-validate model instances).
        for block, model in (("dataset", DatasetConfig), ("eval", EvalConfig)):
            if isinstance(merged.get(block), dict) and block not in swept_blocks:
                try:
                    merged = {**merged, block: model.model_validate(merged[block])}
                except ValidationError as e:
                    raise ConfigError(_format_error(source, e, f"variants.{vname}.{block}")) from None
        for point in points:
            cfg = merged
            label = vname
            group = vname if sweep.lr_tuning is not None else None
            for key, value in point:
                cfg = _set_dotted(cfg, key, value)
                label += "-" + axis_label(key, value)
                if group is not None and key != _LR_KEY:
                    group += "-" + axis_label(key, value)
            # Validate once per point; seeds differ only in an int that no validator looks at.
            swept = {key for key, _ in point}

            def where(key: str, vname: str = vname, override: dict = override, swept: set = swept) -> str:
                # Name the place the value came from: an axis, the variant, or the base config.
                if f"training.{key}" in swept:
                    return f"training.{key} (swept)"
                if key in (override.get("training") or {}):
                    return f"variants.{vname}.training.{key}"
                return f"base.training.{key}"

            _check_training_types(cfg.get("training"), source, where)
            first = parse_run_config({**cfg, "seed": sweep.seeds[0]}, source, f"variants.{vname}")
            if sweep.lr_tuning is not None and sweep.lr_tuning.select.suite not in first.eval.suites:
                raise ConfigError(
                    f"{source}: field 'variants.{vname}.eval.suites': lr_tuning selects on suite "
                    f"'{sweep.lr_tuning.select.suite}', which these runs do not evaluate; add it"
                )
            for seed in sweep.seeds:
                run_cfg = first if seed == sweep.seeds[0] else first.model_copy(update={"seed": seed})
                specs.append(RunSpec(run_cfg, label, group))
    counts = collections.Counter(s.run_id for s in specs)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise ConfigError(
            f"{source}: two runs resolve to the same config ({dupes[0]}); remove the duplicate variant"
        )
    return specs
