"""lm-eval's task index kept on disk (``harness.eval.task_index``): a cached TaskManager equals lm-eval's own
(index, entry order, names, loaded task configs), a second one is served without re-reading the YAMLs, and
any change to the indexed files, the key or the cache file itself rebuilds instead of serving a stale index.

These index a small task directory of their own (``include_defaults=False``); the paper suite over lm-eval's
full tree, cached against uncached down to the task hashes, is in ``tests/test_rehearsal.py``.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
import time
from pathlib import Path

import pytest

from harness.eval import task_index
from harness.eval.cache import task_hash

TASK = """\
task: {name}
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: answer
generation_kwargs: {{until: ["\\n"], do_sample: false}}
metric_list: [{{metric: exact_match}}]
"""


@pytest.fixture
def tasks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A task directory with what an index holds: plain tasks, an ``include:``, a tag, a group with a
    dict member, a ``!function`` reference, nested directories and an ignored ``__pycache__``."""
    monkeypatch.setenv("OTR_HARNESS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    root = tmp_path / "tasks"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "__pycache__").mkdir()
    (root / "alpha.yaml").write_text(TASK.format(name="alpha", data=data) + "tag: [letters]\n")
    (root / "sub" / "beta.yaml").write_text(
        "include: ../alpha.yaml\ntask: beta\ntag: letters\nprocess_results: !function utils.score\n"
    )
    (root / "sub" / "deeper" / "gamma.yaml").write_text(TASK.format(name="gamma", data=data))
    (root / "group.yaml").write_text(
        textwrap.dedent(
            """\
            group: both
            task: [alpha, {task: gamma, num_fewshot: 0}]
            aggregate_metric_list: [{metric: exact_match, weight_by_size: true}]
            """
        )
    )
    (root / "sub" / "utils.py").write_text("def score(doc, results):\n    return {'exact_match': 1.0}\n")
    (root / "__pycache__" / "ghost.yaml").write_text(TASK.format(name="ghost", data=data))
    return root


def _uncached(root: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(root), include_defaults=False)


def _cached(root: Path):
    return task_index.task_manager(str(root), include_defaults=False)


def _same(a, b) -> None:
    assert a.task_index == b.task_index
    assert list(a.task_index) == list(b.task_index)  # entry order: lm-eval iterates the index
    assert (a.all_tasks, a.all_groups, a.all_subtasks, a.all_tags) == (
        b.all_tasks,
        b.all_groups,
        b.all_subtasks,
        b.all_tags,
    )


def _no_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, lm-eval building an index fails the test: the cache must serve it."""
    from lm_eval.tasks._index import TaskIndex

    def refuse(paths, **kwargs):
        raise AssertionError(f"the task index of {list(map(str, paths))} was rebuilt, not served")

    monkeypatch.setattr(TaskIndex, "build", staticmethod(refuse))


def _files() -> list[Path]:
    return sorted(task_index.index_cache_dir().glob("*.json"))


def test_served_index_equals_lm_evals_own_and_loads_the_same_tasks(tasks_dir, monkeypatch):
    own = _uncached(tasks_dir)
    assert {"alpha", "beta", "gamma", "both", "letters"} <= set(own.task_index)
    assert "ghost" not in own.all_tasks  # under __pycache__: not indexed
    first = _cached(tasks_dir)  # built, stored
    assert len(_files()) == 1
    _no_rebuild(monkeypatch)
    served = _cached(tasks_dir)
    _same(served, own)
    _same(first, own)
    assert served.task_index["beta"].cfg["process_results"].endswith("sub/utils.score")  # unresolved path
    assert served.task_index["letters"].tags == {"alpha", "beta"}
    assert served.task_index is not first.task_index  # each manager gets its own (lm-eval mutates it)
    for name in ("alpha", "gamma", "both"):
        ours, theirs = served.load([name])["tasks"], own.load([name])["tasks"]
        assert sorted(ours) == sorted(theirs)
        assert {n: task_hash(t) for n, t in ours.items()} == {n: task_hash(t) for n, t in theirs.items()}
    tag = served.load(["letters"])["tasks"]
    assert sorted(tag) == ["alpha", "beta"]


@pytest.mark.parametrize("change", ["edit", "same-size-edit", "add", "remove", "code"])
def test_a_change_to_the_indexed_files_or_the_code_rebuilds(tasks_dir, monkeypatch, change):
    _cached(tasks_dir)
    before = _files()
    alpha = tasks_dir / "alpha.yaml"
    if change == "edit":
        alpha.write_text(alpha.read_text().replace("task: alpha", "task: alpha_renamed"))
    elif change == "same-size-edit":  # same size and mtime: the ctime of the rewrite tells it apart
        stat = alpha.stat()
        time.sleep(0.05)  # past the kernel's timestamp granularity (a few ms)
        alpha.write_text(alpha.read_text().replace("task: alpha", "task: omega"))
        os.utime(alpha, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime restored
    elif change == "add":
        (tasks_dir / "sub" / "delta.yaml").write_text("include: ../alpha.yaml\ntask: delta\n")
    elif change == "remove":
        (tasks_dir / "sub" / "beta.yaml").unlink()
    else:
        real = task_index.code_identity
        monkeypatch.setattr(task_index, "code_identity", lambda: {**real(), "lm_eval": "another"})
    rebuilt = _cached(tasks_dir)
    _same(rebuilt, _uncached(tasks_dir))
    names = set(rebuilt.task_index)
    expected = {
        "edit": "alpha_renamed" in names and "alpha" not in names,
        "same-size-edit": "omega" in names and "alpha" not in names,
        "add": "delta" in names,
        "remove": "beta" not in names,
        "code": True,
    }[change]
    assert expected, sorted(names)
    after = _files()
    assert len(after) == 1 and after != before  # the newer index replaced the older one's file


def test_an_unreadable_cache_file_is_rebuilt_over(tasks_dir, caplog):
    _cached(tasks_dir)
    (file,) = _files()
    file.write_text(file.read_text()[:1000])  # torn
    with caplog.at_level(logging.WARNING, logger="harness.eval.task_index"):
        _same(_cached(tasks_dir), _uncached(tasks_dir))
    assert "unreadable cache file" in caplog.text
    assert json.loads(file.read_text())["index"]  # whole again


def test_another_keys_file_under_the_same_name_is_not_served(tasks_dir, monkeypatch):
    """The name is a truncated hash: the full key inside the file is what must match."""
    _cached(tasks_dir)
    (file,) = _files()
    stored = json.loads(file.read_text())
    stored["key"]["files"] = ["0" * 64]
    stored["index"] = [row for row in stored["index"] if row[0] != "gamma"]
    file.write_text(json.dumps(stored))
    assert "gamma" in _cached(tasks_dir).task_index


def test_an_index_json_cannot_carry_exactly_is_served_built_never_stored(tasks_dir, caplog):
    """JSON would turn the int keys into strings: such an index is used as built and not stored."""
    (tasks_dir / "odd.yaml").write_text("task: odd\nweights: {1: 0.5, 2: 0.5}\n")
    with caplog.at_level(logging.INFO, logger="harness.eval.task_index"):
        tm = _cached(tasks_dir)
    assert "does not survive JSON" in caplog.text and _files() == []
    assert tm.task_index["odd"].cfg["weights"] == {1: 0.5, 2: 0.5}
    _same(tm, _uncached(tasks_dir))
    _same(_cached(tasks_dir), _uncached(tasks_dir))


def test_a_cache_that_cannot_be_written_costs_only_the_build(tasks_dir, monkeypatch):
    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(task_index, "atomic_write_text", full_disk)
    _same(_cached(tasks_dir), _uncached(tasks_dir))
    assert _files() == []


def test_lm_eval_build_is_restored_and_other_options_pass_through(tasks_dir):
    from lm_eval.tasks._index import TaskIndex

    original = TaskIndex.__dict__["build"]
    _cached(tasks_dir)
    assert TaskIndex.__dict__["build"] is original
    stored = _files()
    with task_index._memoised_index_build():
        flat = TaskIndex.build([tasks_dir], resolve_includes=False)  # not keyed: built as asked
    assert "include" in flat["beta"].cfg and _files() == stored
