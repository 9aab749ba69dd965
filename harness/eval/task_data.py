"""``eval.dataset_overrides`` applied to lm-eval: a task reads its documents from another location, and
nothing else about it changes (schema and semantics: ``harness.config.task_data``).

How: for each overridden task, a small YAML that ``include:``s the task's own YAML (lm-eval's inheritance:
every key, ``!function`` included, comes from the original; only ``dataset_path``, ``dataset_name`` and
``dataset_kwargs`` are set) replaces the task's entry in the task manager's index, so lm-eval builds the
task — alone or as a member of its group — from it. The YAMLs are written once, content-addressed, under
``<cache>/task_data/`` (their path is part of the task's config, hence of the evaluation cache key: it
must not change from one evaluation to the next). ``apply`` must run before any task is loaded: lm-eval
reads a task's documents when it builds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from harness.config import ConfigError
from harness.config.task_data import TaskDataLocation
from harness.paths import cache_dir

WHERE = "eval.dataset_overrides"


def group_members(index: dict[str, Any], name: str, seen: frozenset[str] = frozenset()) -> tuple[set, set]:
    """(leaf task names, sub-group names) of the index entry ``name`` (a task is its own leaf)."""
    entry = index.get(name)
    if entry is None or name in seen:
        return set(), set()
    if entry.kind.name == "TAG":
        return set(entry.tags), set()
    if entry.kind.name != "GROUP":
        return {name}, set()
    leaves: set[str] = set()
    groups = {name}
    for item in _members(entry.cfg or {}):
        sub_leaves, sub_groups = group_members(index, item, seen | {name})
        leaves |= sub_leaves
        groups |= sub_groups
    return leaves, groups


def _members(cfg: dict[str, Any]) -> list[str]:
    """The registered names a group's ``task:`` list refers to (by name, or a dict with task/group)."""
    out = []
    for item in cfg.get("task") or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("task") or item.get("group"), str):
            out.append(item.get("task") or item.get("group"))
    return out


def resolve(
    index: dict[str, Any], overrides: dict[str, TaskDataLocation], entry_names: list[str]
) -> dict[str, TaskDataLocation]:
    """Leaf task -> its location, for the suite entries ``entry_names`` (tasks or groups) of one index.

    A group's location applies to each of its tasks; a task's own key wins. ConfigError (one line) for a
    key that names no task or group of these entries: a typo must not evaluate the Hub's data silently.
    """
    covered = coverage(index, entry_names)
    unknown = sorted(set(overrides) - set(covered))
    if unknown:
        raise unknown_key(unknown[0], entry_names)
    out: dict[str, TaskDataLocation] = {}
    for key in sorted(overrides, key=lambda k: len(covered[k]), reverse=True):  # groups first, tasks win
        for leaf in covered[key]:
            out[leaf] = overrides[key]
    return out


def coverage(index: dict[str, Any], entry_names: list[str]) -> dict[str, set[str]]:
    """Every name an override may use for these entries (entry, sub-group or task) -> its tasks."""
    covered: dict[str, set[str]] = {}
    for name in entry_names:
        leaves, groups = group_members(index, name)
        for leaf in leaves:
            covered[leaf] = {leaf}
        for group in groups:
            covered[group] = group_members(index, group)[0]
    return covered


def unknown_key(key: str, entry_names: list[str]) -> ConfigError:
    return ConfigError(
        f"{WHERE}: '{key}' is not a task or group of the evaluated suites "
        f"(their entries: {', '.join(entry_names)}); use an lm-eval task or group name they run"
    )


def apply(task_manager: Any, locations: dict[str, TaskDataLocation]) -> None:
    """Point each task of ``locations`` at its location in ``task_manager``'s index (in place)."""
    index = task_manager.task_index
    for name, location in sorted(locations.items()):
        entry = index[name]
        if entry.yaml_path is None:  # a Python-only task: no YAML to include
            raise ConfigError(f"{WHERE}: task '{name}' has no YAML config; its data location cannot be set")
        shim = _write_shim(name, Path(entry.yaml_path), location)
        index[name] = dataclasses.replace(entry, yaml_path=shim)


def _write_shim(name: str, original: Path, location: TaskDataLocation) -> Path:
    """The task YAML that includes ``original`` and sets the location; written once (atomically)."""
    text = yaml.safe_dump(
        {"include": str(original.resolve()), "task": name, **location.as_task_config()}, sort_keys=False
    )
    digest = hashlib.sha256(json.dumps([name, text]).encode()).hexdigest()[:16]
    path = cache_dir() / "task_data" / digest / f"{name}.yaml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def check_loaded(tasks: dict[str, Any], locations: dict[str, TaskDataLocation]) -> None:
    """ConfigError if a loaded task does not read from its override (a group that sets the location of
    its members itself would win over the index): never evaluate other data than the config says."""
    for name, task in tasks.items():
        want = locations.get(name)
        if want is not None and task.get_config("dataset_path") != want.dataset_path:
            raise ConfigError(
                f"{WHERE}: task '{name}' was built with dataset_path '{task.get_config('dataset_path')}', "
                f"not '{want.dataset_path}' (its group sets the location itself); override the group's key"
            )
