"""Sweep expansion: a ``SweepConfig`` -> one ``RunSpec`` (resolved ``RunConfig`` + run id) per run.

``expand_sweep`` has no side effects and validates every run before anything is planned: each resolved
config as a ``RunConfig``, every ``training:`` value against ``TrainingArguments``' types (the committed
table in ``training_args.py``), and the ``lr_tuning`` selection task against its suite. Run ids are
``<readable slug>-<config hash[:8]>`` (``RunSpec.run_id``); the slug names the variant and swept values.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import re
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from harness.config.io import _format_error, parse_run_config
from harness.config.schema import ConfigError, DatasetConfig, EvalConfig, RunConfig
from harness.config.suites import load_suite
from harness.config.sweep_schema import SweepConfig
from harness.config.training_args import training_value_problem
from harness.config.training_checks import range_problem


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


def _check_training_types(training: Any, source: str, where: Callable[[str], str]) -> None:
    """Type-check ``training:`` values against TrainingArguments' annotations at plan time, not at step 0,
    then range-check the common ones (``training_checks``).

    A string where the field takes no string is rejected even when it would parse (see
    ``training_value_problem``). Values are not rewritten, so run ids (config hashes) stay what they were.
    """
    if not isinstance(training, dict):
        return  # RunConfig reports a non-mapping `training`
    for key, value in training.items():
        try:
            problem = training_value_problem(key, value)
        except TypeError:  # unhashable (a dict or list value): not cached
            problem = training_value_problem.__wrapped__(key, value)
        if problem:
            raise ConfigError(f"{source}: field '{where(key)}': {problem}")
        problem = range_problem(key, value)  # well typed; is it in range? (lr > 0, batch size >= 1, ...)
        if problem:
            raise ConfigError(f"{source}: field '{where(key)}': {problem} (got {value!r})")


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


def _check_suites(cfg: RunConfig, source: str, field: str, loaded: set[str]) -> None:
    """Every evaluation suite of a run exists and is valid, at plan time (not when its evaluation starts)."""
    for name in cfg.eval.suites:
        if name in loaded:
            continue
        try:
            load_suite(name)
        except ConfigError as e:
            raise ConfigError(f"{source}: field '{field}': {e}") from None
        loaded.add(name)


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
    suites_ok: set[str] = set()  # suite files already read (each distinct one is read once)
    if sweep.evaluate_base:
        base_cfg = {k: v for k, v in base.items() if k in {"model", "eval", "toy"}}
        specs.append(RunSpec(parse_run_config(base_cfg, source, "base"), "base"))
        _check_suites(specs[-1].config, source, "base.eval.suites", suites_ok)
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
            _check_suites(first, source, f"variants.{vname}.eval.suites", suites_ok)
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
