"""Range checks of the common ``training:`` values, at plan time and without transformers or torch.

``training_args.py`` checks a value's *type* against ``TrainingArguments``; this module checks that a
well-typed value makes sense, because transformers itself accepts many that do not: ``learning_rate: 0``
or ``-1e-3`` (torch rejects only the negative one, inside the run), ``max_steps: -5`` (silently trains
``num_train_epochs`` instead), ``warmup_steps: 2.5`` (silently 2 steps), ``per_device_train_batch_size:
0`` (fails at the first batch). ``harness.training.recipe.preflight`` then builds the real
``TrainingArguments`` and optimizer for every run before the first one starts, for the rest.

Contract: ``range_problem(key, value)`` is one line saying what is wrong with one value (``must be > 0``),
or None — also for keys it does not know and for values of the wrong type (the type check names those).
``consistency_problems(values)`` checks fields against each other on the merged values (defaults
included) and returns ``(key, message)`` pairs.
"""

from __future__ import annotations

from typing import Any


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _at_least_one(v: float) -> str | None:
    if v < 1:
        return "must be >= 1"
    return None if float(v).is_integer() else "must be a whole number"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _beta(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _steps_or_ratio(v: float) -> str | None:
    # transformers 5: a value < 1 is a ratio of the total steps, a value >= 1 a number of steps.
    if v <= 0:
        return "must be > 0 (a number of steps, or a ratio < 1 of the total)"
    if v >= 1 and not float(v).is_integer():
        return "must be a whole number of steps (>= 1) or a ratio < 1 of the total steps"
    return None


def _warmup(v: float) -> str | None:
    if v < 0:
        return "must be >= 0 (a number of steps, or a ratio < 1 of the total)"
    if v >= 1 and not float(v).is_integer():
        return "must be a whole number of steps (>= 1) or a ratio < 1 of the total steps (e.g. 0.1)"
    return None


def _max_steps(v: float) -> str | None:
    if v == -1 or (v >= 1 and float(v).is_integer()):
        return None
    return "must be a positive whole number of steps, or -1 to train num_train_epochs"


_CHECKS = {
    "learning_rate": _positive,
    "per_device_train_batch_size": _at_least_one,
    "per_device_eval_batch_size": _at_least_one,
    "gradient_accumulation_steps": _at_least_one,
    "num_train_epochs": _positive,
    "max_steps": _max_steps,
    "warmup_steps": _warmup,
    "weight_decay": _non_negative,
    "max_grad_norm": _non_negative,
    "adam_beta1": _beta,
    "adam_beta2": _beta,
    "adam_epsilon": _non_negative,
    "logging_steps": _steps_or_ratio,
    "save_steps": _steps_or_ratio,
    "eval_steps": _steps_or_ratio,
    "dataloader_num_workers": _non_negative,
}


def checked_fields() -> tuple[str, ...]:
    """The ``training:`` fields whose range is checked here."""
    return tuple(_CHECKS)


def range_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``training.<key>: value`` (one line, without the value), or None."""
    check = _CHECKS.get(key)
    if check is None or not _number(value):
        return None
    return check(value)


def consistency_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for fields that contradict each other in the merged ``training:`` values."""
    out = []
    if values.get("fp16") is True and values.get("bf16") is True:
        out.append(("bf16", "fp16 and bf16 are both true; choose one mixed precision"))
    if values.get("fp16") is True and values.get("use_cpu") is True:
        out.append(("fp16", "fp16 mixed precision needs a GPU; on a CPU use bf16 (with use_cpu: true)"))
    steps, epochs = values.get("max_steps", -1), values.get("num_train_epochs")
    if _number(steps) and steps == -1 and _number(epochs) and epochs <= 0:
        out.append(("num_train_epochs", "must be > 0 when max_steps is -1 (nothing would be trained)"))
    return out
