"""Dotted ``key=value`` overrides of a sweep file or run config: ``--set base.training.max_steps=2``.

The command line's one way to change a config without editing its file (torchtune-style ``key=value``):
``otr-harness sweep run FILE --set base.model=/path --set base.eval.limit=4``. Each override is applied to
the file's mapping before anything is validated, planned or run:

- ``KEY`` is a dotted path from the top of the file (``base.dataset.path``, ``variants.otr.objective.k``,
  ``seeds``); in a mapping of free keys the segment is the key (``base.eval.dataset_overrides.gsm8k_cot``),
  and in ``grid`` / ``zip``-like mappings of dotted axis names the rest of the path is one key
  (``grid.training.learning_rate``). A list is set whole (``seeds=[0,1,2]``), never indexed.
- ``VALUE`` is parsed as YAML: a scalar (``2``, ``5.0e-5``, ``true``, ``null``, ``/path``) or a flow
  collection (``[0, 1]``, ``{name: otr, k: 16}``; JSON is valid YAML). Quote a string that would parse as
  something else: ``name='001'``.

Checked here, before anything runs, against the schema (``SweepConfig`` / ``RunConfig``; ``training:``
keys against transformers' ``TrainingArguments`` table): an unknown key or a value of the wrong type is a
``ConfigError`` of one line naming the override, e.g.
``--set base.eval.limt=4: unknown key 'limt' in 'base.eval' (valid: backend, batch_size, ...)``. Value
ranges and cross-field rules are then checked by the config's own validation, as for a value in the file.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from harness.config.schema import ConfigError, RunConfig
from harness.config.sweep_schema import SweepConfig
from harness.config.training_args import training_argument_names, training_value_problem

# Fields typed as plain mappings whose content is a config of its own: walked as that config.
_FIELD_AS: dict[tuple[type[BaseModel], str], Any] = {
    (SweepConfig, "base"): RunConfig,
    (SweepConfig, "variants"): dict[str, RunConfig],
}
_TRAINING = object()  # marker: `training:` keys are TrainingArguments names, checked by their own table


def parse_override(text: str) -> tuple[str, Any]:
    """``'a.b=2'`` -> ``('a.b', 2)``: the value parsed as YAML. ConfigError for text without ``=``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {text}: expected KEY=VALUE with a dotted KEY (e.g. --set base.training.max_steps=2)"
        )
    try:
        value = yaml.load(raw, Loader=_ValueLoader) if raw.strip() else ""
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(
            f"--set {text}: the value is not valid YAML ({first}); quote it: {key}='...'"
        ) from None
    return key, value


class _ValueLoader(yaml.SafeLoader):
    """YAML's safe loader, plus YAML 1.2's floats without a dot (``1e-4``), which YAML 1.1 reads as strings:
    on a command line ``learning_rate=1e-4`` means a number. A quoted ``'1e-4'`` stays a string."""


_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], root: type[BaseModel]) -> dict[str, Any]:
    """A copy of ``data`` with every ``KEY=VALUE`` of ``overrides`` set, in order (a later one wins).

    ``root`` is the schema of ``data`` (``SweepConfig`` or ``RunConfig``). Raises ConfigError, naming the
    override, for a malformed one, an unknown key or a value of the wrong type; ``data`` is not modified.
    """
    out = _copy(data)
    for text in overrides:
        key, value = parse_override(text)
        problem = _check(root, key.split("."), value)
        if problem:
            raise ConfigError(f"--set {text}: {problem}")
        _set(out, key.split("."), value, root)
    return out


# ------------------------------------------------------------------------------------ the schema walk


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; any other annotation unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field(model: type[BaseModel], name: str) -> Any:
    """The annotation of ``model.name`` as the walk sees it (``None``: no such field)."""
    if (model, name) in _FIELD_AS:
        return _FIELD_AS[(model, name)]
    if model is RunConfig and name == "training":
        return _TRAINING
    info = model.model_fields.get(name)
    if info is None:
        return Any if model.model_config.get("extra") == "allow" else None
    return info.annotation


def _check(annotation: Any, parts: list[str], value: Any, where: str = "") -> str | None:
    """What is wrong with setting ``parts`` (a dotted path below ``annotation``) to ``value``, or None."""
    annotation = _unwrap_optional(annotation)
    if annotation is _TRAINING:
        return _check_training(parts, value, where)
    if not parts:
        return _check_value(annotation, value)
    head, rest = parts[0], parts[1:]
    here = f"{where}.{head}" if where else head
    if _is_model(annotation):
        sub = _field(annotation, head)
        if sub is None:
            valid = ", ".join(sorted(annotation.model_fields))
            return f"unknown key '{head}' in '{where or 'the top level'}' (valid: {valid})"
        return _check(sub, rest, value, here)
    origin = typing.get_origin(annotation)
    if origin is dict:
        _, value_type = typing.get_args(annotation) or (str, Any)
        inner = _unwrap_optional(value_type)
        if _is_model(inner) or typing.get_origin(inner) is dict or inner is Any:
            return _check(value_type, rest, value, here)
        # A mapping of dotted names to plain values (grid: {training.learning_rate: [...]}): the rest of
        # the path is one key.
        return _check_value(value_type, value)
    if origin in (list, tuple):
        return f"'{where}' is a list: set it whole ({where}=[...]), not '{here}'"
    if annotation is Any:
        return None
    return f"'{where}' is a {_type_name(annotation)}, which has no key '{head}'"


def _check_training(parts: list[str], value: Any, where: str) -> str | None:
    if not parts:
        if not isinstance(value, dict):
            return f"'{where}' is a mapping of TrainingArguments fields"
        return next((p for k, v in value.items() if (p := _check_training([str(k)], v, where))), None)
    name = parts[0]
    if len(parts) > 1:
        return f"'{where}.{name}' is a TrainingArguments value; it has no key '{parts[1]}'"
    if name not in training_argument_names():
        return f"unknown key '{name}' in '{where}' (not a transformers.TrainingArguments field)"
    try:
        problem = training_value_problem(name, value)
    except TypeError:  # unhashable (a list or mapping): not cached
        problem = training_value_problem.__wrapped__(name, value)
    return f"'{where}.{name}': {problem}" if problem else None


def _check_value(annotation: Any, value: Any) -> str | None:
    """Type-check a leaf value (a model or mapping is left to the config's own validation: it may be a
    partial override, as in a variant)."""
    inner = _unwrap_optional(annotation)
    if annotation is Any:
        return None
    if _is_model(inner):
        return None if value is None or isinstance(value, dict) else _expects(inner)
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"  # the override shows it already
        return f"{msg[0].lower()}{msg[1:]}{shown}"
    return None


def _expects(model: type[BaseModel]) -> str:
    return f"expects a mapping ({model.__name__}), e.g. {{key: value}}"


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _set(data: dict[str, Any], parts: list[str], value: Any, root: Any) -> None:
    """Set the dotted path in place, creating mappings on the way; a dotted-name mapping (grid) takes the
    rest of the path as one key."""
    annotation: Any = root
    node = data
    for i, part in enumerate(parts[:-1]):
        annotation = _unwrap_optional(annotation)
        if _is_model(annotation):
            annotation = _field(annotation, part)
        elif typing.get_origin(annotation) is dict:
            value_type = _unwrap_optional((typing.get_args(annotation) or (str, Any))[1])
            if not (_is_model(value_type) or typing.get_origin(value_type) is dict or value_type is Any):
                node[".".join(parts[i:])] = value  # grid-like: the rest is one key
                return
            annotation = value_type
        else:
            annotation = Any
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
