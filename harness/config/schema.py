"""Typed run config: one training+evaluation run (``RunConfig``) and its blocks; ``ConfigError``.

Every config is validated up front, before anything is trained or written: a bad value raises
``ConfigError`` whose message names the file and the dotted field, says what was wrong and how to fix it
(``io.py`` formats it; this module's validators say what and how).

YAML keys mirror the libraries users already know: ``training:`` takes transformers' ``TrainingArguments``
names (``learning_rate``, ``per_device_train_batch_size``, ``max_steps``, ...; checked against the
committed table in ``training_args.py``, so no transformers import), ``objective:`` takes the objective's
name and its parameters (``k``, ``tau``, ``beta`` for OTR; checked by ``harness.objectives.params``),
``eval:`` names evaluation suites. The sweep file's schema is in ``sweep_schema.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from harness.config.hashing import config_hash
from harness.config.task_data import TaskDataLocation
from harness.config.toy import ToyConfig, valid_refs
from harness.config.training_args import training_argument_names
from harness.config.training_checks import consistency_problems, range_problem
from harness.objectives.params import validate_params


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
    drop_all_prompt: bool = Field(
        False,
        description="examples left with no response token by truncation to max_length: false (default) "
        "stops the run naming the first one; true drops them with a warning (counted in summary.json's "
        "num_no_response), for large real datasets with a few over-long prompts",
    )
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
        validate_params(self.name, self.params)
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
    sandbox: Literal["auto", "bwrap", "guard"] = Field(
        "auto",
        description="where model-written code runs (harness/eval/sandbox.py): bwrap = bubblewrap namespaces "
        "(an error where it cannot run), guard = the Python guard only, auto = bwrap when a probe shows it "
        "works, else guard with one warning; the layer used is recorded in results.json",
    )
    cache: bool = Field(True, description="reuse results of identical evaluations (harness/eval/cache.py)")
    dataset_overrides: dict[str, TaskDataLocation] = Field(
        default_factory=dict,
        description="lm-eval task or group name -> where its documents come from (dataset_path, "
        "dataset_name, dataset_kwargs); everything else stays the task's own (harness/config/task_data.py)",
    )
    max_samples: int | None = Field(
        None, gt=0, description="cap on every suite entry's samples (Avg@k's k): smoke tests, rehearsals"
    )
    max_gen_toks: int | None = Field(
        None, gt=0, description="cap on every entry's max new tokens (the entry's, else the task's own)"
    )


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


def _adapts_lm_head(lora: LoraConfig) -> bool:
    """Whether LoRA adapters or ``modules_to_save`` reach the output head (named ``lm_head``)."""
    targets = [] if lora.target_modules == "all-linear" else lora.target_modules  # all-linear skips it
    return any(name.split(".")[-1] == "lm_head" for name in [*targets, *(lora.modules_to_save or [])])


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
    training_path: Literal["fused", "logits"] = Field(
        "fused",
        validate_default=True,  # the lora check below runs for the default too
        description="fused (default): the LM head computes the objective tile by tile from the final hidden "
        "states inside the model's own forward, so the [B, T, V] logits and their gradient never exist "
        "(harness/training/fused.py); logits: objectives.compute on model(...).logits, the reference path. "
        "Same loss, diagnostics and draws on both",
    )

    @field_validator("training_path")
    @classmethod
    def _fusable_lora(cls, v: str, info: ValidationInfo) -> str:
        # The fused path needs a plain linear LM head; an adapted one would be refused only after the
        # model loaded: say it here, before anything runs. (`lora` is declared before this field.)
        lora = info.data.get("lora")
        if v == "fused" and lora is not None and _adapts_lm_head(lora):
            raise ValueError(
                "LoRA or modules_to_save on lm_head (lora:) needs training_path: logits (the fused path "
                "computes the objective from a plain LM head); set it, or leave lm_head out of lora"
            )
        return v

    @field_validator("training")
    @classmethod
    def _check_training(cls, v: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(v) & _RESERVED_TRAINING_KEYS)
        if reserved:
            raise ValueError(f"'{reserved[0]}' is set by the harness (run directory, seed); remove it")
        unknown = sorted(set(v) - training_argument_names())
        if unknown:
            raise ValueError(
                f"unknown TrainingArguments field '{unknown[0]}' (see transformers.TrainingArguments for valid names)"
            )
        # Ranges (lr > 0, batch sizes >= 1, ...) and fields that contradict each other: named as
        # `training.<key>`, which a plain ValueError here could not do (its location is `training`).
        problems = [(k, range_problem(k, x), x) for k, x in v.items()]
        merged = {**TRAINING_DEFAULTS, **v}
        problems += [(k, msg, merged.get(k)) for k, msg in consistency_problems(merged)]
        for key, msg, value in problems:
            if msg:
                raise ValidationError.from_exception_data(
                    "training",
                    [
                        InitErrorDetails(
                            type=PydanticCustomError("training_value", msg), loc=(key,), input=value
                        )
                    ],
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
        return config_hash(self.model_dump(mode="json"))
