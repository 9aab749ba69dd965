"""The run directory contract: atomic writes, status markers, torn logs."""

from __future__ import annotations

import pytest

from harness.runs.io import atomic_dir, atomic_write_text, read_jsonl
from harness.runs.layout import RunDir


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_atomic_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "whole.json").write_text("{}")
    assert [p.name for p in final.iterdir()] == ["whole.json"]


def test_status_markers(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.status() == "pending"
    run.mark_failed("train", "Traceback ...")
    assert run.status() == "failed" and run.failure("train") == "Traceback ..."
    run.mark_done("train")
    assert not run.is_failed("train") and run.status() == "partial"
    run.mark_done("eval")
    assert run.status() == "done"
    assert RunDir(tmp_path / "b").status(("eval",)) == "pending"


def test_read_jsonl_ignores_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
