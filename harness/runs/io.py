"""Atomic writes, tolerant reads and the one file lock of the harness.

Every file a stage writes goes through a temp file in the same directory and ``os.replace``, so a reader
(another stage, a resumed sweep, the report) sees either the old file or the whole new one, never half of
it. ``remove_stale_temps`` deletes the temps a SIGKILL left between the two steps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """``atomic_write_text`` of indented, key-sorted JSON (non-JSON values through ``str``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a torn last line (the writer was killed mid-line) is ignored."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def remove_stale_temps(directory: Path, recursive: bool = True) -> list[Path]:
    """Delete the temp files/dirs (``.<name>.<random>.tmp``) a killed process left behind.

    Atomic writes go through such temps and rename them into place; a SIGKILL between the two leaves the
    temp. Only call this on a directory no other process is writing to (a run's: while holding its lock).
    """
    if not directory.is_dir():
        return []
    pattern = "**/.*.tmp" if recursive else ".*.tmp"
    stale = sorted(directory.glob(pattern), key=lambda q: len(q.parts), reverse=True)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; yields whether it is held.

    ``blocking=False`` yields False at once when another process holds it (a sweep skips a busy run);
    ``blocking=True`` waits for it (a second builder of the same toy world waits, then reuses). ``flock`` is
    released by the kernel when the holder exits, however it dies (SIGKILL included), so a lock never goes
    stale. On network file systems it is only as good as the file system's lock support.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
