"""Evaluation suites (``evaluation/suites/<name>.yaml``): a config schema, no lm-eval import.

A suite lists lm-eval tasks (or groups) with the metadata the report needs (domain, split, primary metric)
and the generation settings of each entry (``GenerationSettings``: chat template, few-shot, temperature,
samples per question for Avg@k, max new tokens). A suite-level ``defaults:`` block applies to every entry;
an entry overrides any field. Unset fields keep the lm-eval task's own values (its YAML), so a task
evaluated with no settings is exactly lm-eval's task. Planning a sweep reads suites (lr-tuning selection,
the unsafe-code opt-in) without importing lm-eval; ``harness.eval`` runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.config.io import load_yaml
from harness.config.schema import ConfigError
from harness.paths import evaluation_dir


class UnsafeCodeError(ConfigError):
    """A suite would execute model-generated code but the opt-in is off."""


# --------------------------------------------------------------------------------------------- suites


class GenerationSettings(BaseModel):
    """How an entry is prompted and decoded. ``None`` = the lm-eval task's own value (its YAML).

    Defaults: no chat template, the task's few-shot count and decoding (greedy for the tasks that define
    it), one sample. The DFT recipe for math is ``samples: 16, temperature: 1.0`` (Avg@16), set in the
    ``math`` / ``paper`` suites' entries.
    """

    model_config = ConfigDict(extra="forbid")
    apply_chat_template: bool = Field(False, description="render prompts with the tokenizer's chat template")
    fewshot_as_multiturn: bool | None = Field(
        None, description="few-shot examples as chat turns; None = apply_chat_template (lm-eval CLI default)"
    )
    system_instruction: str | None = None
    num_fewshot: int | None = Field(None, ge=0, description="None: the task's own")
    temperature: float | None = Field(None, ge=0, description="None: the task's generation_kwargs")
    do_sample: bool | None = Field(None, description="None: temperature > 0 when temperature is set")
    top_p: float | None = Field(None, gt=0, le=1)
    max_gen_toks: int | None = Field(None, gt=0, description="max new tokens; None: the task's own")
    samples: int = Field(1, ge=1, description="k of Avg@k: independent sampled runs, scores averaged")

    def generation_kwargs(self) -> dict[str, Any]:
        """The overrides of the task's ``generation_kwargs`` (only the fields that are set)."""
        out: dict[str, Any] = {}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        do_sample = self.do_sample
        if do_sample is None and self.temperature is not None:
            do_sample = self.temperature > 0
        if do_sample is not None:
            out["do_sample"] = do_sample
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.max_gen_toks is not None:
            out["max_gen_toks"] = self.max_gen_toks
        return out


_SETTING_FIELDS = tuple(GenerationSettings.model_fields)


class SuiteTask(BaseModel):
    """One entry of a suite: an lm-eval task or group, what it measures, and its generation settings."""

    model_config = ConfigDict(extra="forbid")
    task: str
    domain: Literal["math", "code", "reasoning", "other"] = "other"
    # id: in-domain test; ood: out-of-distribution test; val: model selection only (e.g. picking the lr),
    # never reported as a result.
    split: Literal["id", "ood", "val"] = "id"
    metric: str = Field(
        "exact_match", description="primary metric name as lm-eval reports it (before the comma)"
    )
    filter: str | None = Field(None, description="lm-eval filter of the primary metric; None: the first")
    unsafe_code: bool = Field(
        False, description="executes model-generated code (checked before loading the task, for speed)"
    )
    # Generation settings: unset = the suite's `defaults:` (which default to the task's own values).
    apply_chat_template: bool | None = None
    fewshot_as_multiturn: bool | None = None
    system_instruction: str | None = None
    num_fewshot: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0)
    do_sample: bool | None = None
    top_p: float | None = Field(None, gt=0, le=1)
    max_gen_toks: int | None = Field(None, gt=0)
    samples: int | None = Field(None, ge=1)

    def settings(self, defaults: GenerationSettings) -> GenerationSettings:
        """This entry's settings: the suite defaults overridden by the fields the entry sets."""
        own = {k: getattr(self, k) for k in _SETTING_FIELDS if k in self.model_fields_set}
        return GenerationSettings.model_validate({**defaults.model_dump(), **own})


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    include_path: str | None = None
    builtin_tasks: bool = Field(
        True, description="index lm-eval's own tasks too (~15 s); false for suites made only of custom tasks"
    )
    defaults: GenerationSettings = Field(default_factory=GenerationSettings)
    tasks: list[SuiteTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_and_samplable(self) -> Suite:
        seen: set[str] = set()
        for i, entry in enumerate(self.tasks):
            if entry.task in seen:
                raise ValueError(f"tasks.{i}: task '{entry.task}' is listed twice")
            seen.add(entry.task)
            s = entry.settings(self.defaults)
            if s.samples > 1 and s.generation_kwargs().get("do_sample") is False:
                raise ValueError(
                    f"tasks.{i} ({entry.task}): samples: {s.samples} needs sampling; set temperature > 0 "
                    "(or samples: 1 for greedy decoding)"
                )
        return self


def load_suite(name: str) -> Suite:
    """Load ``evaluation/suites/<name>.yaml`` (or a path to a suite file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else evaluation_dir() / "suites" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (evaluation_dir() / "suites").glob("*.yaml"))
        raise ConfigError(f"eval.suites: unknown suite '{name}' (no {path}); valid: {', '.join(known)}")
    try:
        return Suite.model_validate(load_yaml(path))
    except ValidationError as e:
        first = e.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: field '{'.'.join(map(str, first['loc']))}': {msg}") from None


def adhoc_suite(tasks: list[str], include_path: str | None = None, metric: str | None = None) -> Suite:
    """A suite made of the given lm-eval task names (``otr-harness eval --tasks a,b``), default settings.

    The primary metric is ``metric`` or, when None, the first metric lm-eval reports for the task.
    """
    entries = [SuiteTask(task=t, metric=metric or "") for t in tasks]
    path = str(Path(include_path).resolve()) if include_path else None
    return Suite(name="tasks", include_path=path, tasks=entries)
