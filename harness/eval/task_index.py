"""lm-eval's task index, kept on disk: an evaluation process does not re-read lm-eval's ~14,000 task YAMLs
to find the few it runs.

Every ``lm_eval.tasks.TaskManager`` starts by walking the directories it indexes (lm-eval's own ``tasks/``
and any ``include_path``) and parsing every YAML in them (``TaskIndex.build``): 12-19 s of CPU on the
2-core machine, in every evaluation process, before a single task is loaded. The index it builds (name ->
``Entry``: kind, YAML path, the YAML's config with its includes merged and ``!function`` left unresolved,
tags) depends only on lm-eval's index code, the YAML parser and the files under those directories. So
:func:`task_manager` memoises ``TaskIndex.build(paths)`` in ``<cache>/lm_eval_index/``
(``harness.paths.cache_dir()``): a process whose directories hold the same files gets the stored index
(~1 s), and lm-eval's own ``TaskManager.__init__`` does the rest. Loading a task is unchanged: lm-eval
re-reads its YAML (functions resolved) whenever it builds one, from the index or not.

Identity (the file name and, checked on read, the file's own ``key``):
- the directories as lm-eval was given them (and the working directory when one is relative: the index's
  YAML paths are spelt from them);
- every ``*.yaml`` under them, as lm-eval's walk sees them (``__pycache__`` and ``.ipynb_checkpoints``
  skipped, symlinked directories not entered): relative path, size, mtime, ctime and inode, so an edited,
  replaced, added or removed file gives a new key;
- the versions of lm-eval and PyYAML, whether PyYAML uses libyaml, and the size and mtime of lm-eval's
  index and YAML-loader modules (an edited lm-eval source tree rebuilds too).

An index is stored only if its JSON reads back equal to the built one, entry order included (a config
value JSON cannot carry exactly, e.g. a tuple or a non-string key, means that index is not stored): a
served index is always what ``TaskIndex.build`` returned. Files are written atomically; a newer index of
the same directories replaces the older one's file; an unreadable file is rebuilt over; deleting the
directory is always safe. The full lm-eval index is ~20 MB of JSON.

Not in the key: a file outside these directories that one of their YAMLs ``include:``s (lm-eval's own
includes stay inside its tree). Such a file can only change the index's names, kinds, tags and group
member lists (a task's config is re-read when it is built); after changing one, delete the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.paths import cache_dir
from harness.runs.io import atomic_write_text

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored layout changes
IGNORE_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # the directories lm-eval's index walk skips
INDEX_MODULES = ("lm_eval.tasks._index", "lm_eval.tasks._yaml_loader")  # whose code decides the index


def index_cache_dir() -> Path:
    """``<cache>/lm_eval_index``."""
    return cache_dir() / "lm_eval_index"


def task_manager(include_path: str | None = None, include_defaults: bool = True) -> Any:
    """``lm_eval.tasks.TaskManager(include_path=..., include_defaults=...)``, its index served from the
    cache when the indexed files are unchanged (and stored when they are new). Equal to the uncached
    manager; if lm-eval no longer has ``TaskIndex.build`` as a static method, simply the uncached one.
    Not thread-safe: ``TaskIndex.build`` is replaced on the class while the manager is constructed."""
    from lm_eval.tasks import TaskManager

    with _memoised_index_build():
        return TaskManager(include_path=include_path, include_defaults=include_defaults)


@contextlib.contextmanager
def _memoised_index_build() -> Iterator[None]:
    """Within the block, ``TaskIndex.build(paths)`` goes through :func:`cached_build`."""
    try:
        from lm_eval.tasks._index import TaskIndex
    except ImportError:  # an lm-eval without this index: nothing to memoise
        yield
        return
    original = TaskIndex.__dict__.get("build")
    if not isinstance(original, staticmethod):  # another lm-eval: leave it alone
        yield
        return
    build = original.__func__

    def memoised(paths: Any, **kwargs: Any) -> dict[str, Any]:
        if kwargs:  # an option we do not key on (e.g. resolve_includes=False): build as asked
            return build(paths, **kwargs)
        return cached_build(build, list(paths))

    TaskIndex.build = staticmethod(memoised)
    try:
        yield
    finally:
        TaskIndex.build = original


def cached_build(build: Callable[[list[Path]], dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """``build(paths)`` (lm-eval's ``TaskIndex.build``), served from / stored into the cache. Any failure
    to read or write the cache only costs the build."""
    try:
        name, key = cache_key(paths)
    except OSError as e:  # a directory vanished mid-walk, ...: nothing to key on
        log.debug("lm-eval task index not cached (%s)", e)
        return build(paths)
    file = index_cache_dir() / f"{name}.json"
    started = time.time()
    index = read_index(file, key)
    if index is not None:
        log.info("lm-eval task index: %d entries from the cache (%.1f s)", len(index), time.time() - started)
        return index
    index = build(paths)
    took = time.time() - started
    try:
        stored = store_index(file, key, index)
    except OSError as e:  # a read-only or full cache: the next process builds again
        log.debug("lm-eval task index not stored (%s)", e)
        stored = False
    log.info(
        "lm-eval task index: %d entries built in %.1f s%s",
        len(index),
        took,
        ", stored in the cache" if stored else "",
    )
    return index


# ------------------------------------------------------------------------------------------------ key


def cache_key(paths: list[Path]) -> tuple[str, dict[str, Any]]:
    """(file name, key): the name is ``<directories>-<content>`` (16 hex digits each), so a newer index of
    the same directories finds the older file to replace; the key is checked on read."""
    where = {
        "format": FORMAT,
        "paths": [str(p) for p in paths],
        # Relative directories: lm-eval walks (and spells the YAML paths) from the working directory.
        "cwd": os.getcwd() if any(not Path(p).is_absolute() for p in paths) else None,
    }
    content = {"code": code_identity(), "files": [files_digest(Path(p)) for p in paths]}
    where_hash = _digest(where)[:16]
    return f"{where_hash}-{_digest(content)[:16]}", {**where, **content}


def code_identity() -> dict[str, Any]:
    """What decides how the YAMLs are read into an index, besides the files: versions and module stats."""
    import yaml

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    modules = {}
    for name in INDEX_MODULES:
        file = getattr(sys.modules.get(name), "__file__", None)
        st = os.stat(file) if file else None
        modules[name] = [file, st.st_size, st.st_mtime_ns] if st else None
    return {
        "lm_eval": version("lm_eval"),
        "pyyaml": version("PyYAML"),
        "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
        "modules": modules,
    }


def files_digest(root: Path) -> str:
    """SHA-256 over (relative path, size, mtime, ctime, inode) of every ``*.yaml`` under ``root`` that
    lm-eval's walk reads (``**/*.yaml`` without entering symlinked directories). ~0.1 s for lm-eval's tree."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False, as pathlib's "**" in 3.11
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORE_DIRS)
        for name in sorted(filenames):
            if name.endswith(".yaml"):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # a dangling symlink: lm-eval skips it too
                    h.update(f"{os.path.relpath(path, root)}\0dangling\n".encode())
                    continue
                stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                h.update(f"{os.path.relpath(path, root)}\0{stamp}\n".encode())
    return h.hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- storage


def encode(index: dict[str, Any]) -> list[list[Any]]:
    """The index as JSON-able rows ``[name, {entry fields}]``, in the index's order (tags sorted)."""
    return [
        [
            name,
            {
                "name": e.name,
                "kind": e.kind.name,
                "yaml_path": None if e.yaml_path is None else str(e.yaml_path),
                "cfg": e.cfg,
                "tags": sorted(e.tags),
            },
        ]
        for name, e in index.items()
    ]


def decode(rows: list[list[Any]]) -> dict[str, Any]:
    """The inverse of :func:`encode`: lm-eval ``Entry`` objects (KeyError / TypeError on a bad row)."""
    from lm_eval.tasks._index import Entry, Kind

    return {
        name: Entry(
            name=e["name"],
            kind=Kind[e["kind"]],
            yaml_path=None if e["yaml_path"] is None else Path(e["yaml_path"]),
            cfg=e["cfg"],
            tags=set(e["tags"]),
        )
        for name, e in rows
    }


def read_index(file: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The index stored in ``file`` under ``key``; None if there is none, or it is another key's or
    unreadable (it is then rebuilt over)."""
    try:
        stored = json.loads(file.read_text())
        if stored.get("key") != key:
            return None
        return decode(stored["index"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("lm-eval task index: unreadable cache file %s (%s); rebuilding it", file, e)
        return None


def store_index(file: Path, key: dict[str, Any], index: dict[str, Any]) -> bool:
    """Write ``index`` to ``file`` (atomically) if its JSON reads back equal, order included; remove the
    older files of the same directories. Returns whether it was stored."""
    try:
        text = json.dumps({"key": key, "index": encode(index)}, separators=(",", ":"), allow_nan=False)
        back = decode(json.loads(text)["index"])
    except (TypeError, ValueError):  # a value JSON cannot hold at all (a date, NaN, ...)
        back = None
    if back != index or list(back or ()) != list(index):
        log.info("lm-eval task index: not cached (a config value does not survive JSON exactly)")
        return False
    atomic_write_text(file, text)
    where = file.name.split("-")[0]
    for old in file.parent.glob(f"{where}-*.json"):
        if old != file:
            old.unlink(missing_ok=True)
    return True
