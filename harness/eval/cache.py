"""Evaluation cache: an evaluation that was already done is served from disk instead of re-run.

One entry per (suite entry, model): the entry's results record and lm-eval's per-sample logs, stored under
``<cache>/eval/<key[:2]>/<key>/`` (``harness.paths.cache_dir()``; ``OTR_HARNESS_EVAL_CACHE`` moves just this
cache, ``OTR_HARNESS_CACHE`` all caches). The key is a SHA-256 of everything that decides the numbers
(:func:`harness.eval.entries.entry_key`):

- the checkpoint's content hash (:func:`checkpoint_hash`: the weights, config and tokenizer files; a copy of
  the same checkpoint elsewhere hits, a retrained one misses);
- the lm-eval task hash (:func:`task_hash`): each task's resolved config (after the suite's overrides)
  and the content of the documents it evaluates and draws few-shot examples from;
- the generation settings (chat template, few-shot, temperature, samples, max tokens, seeds);
- the backend and its model arguments (dtype, batch size, parallel sizes), the limit, and the versions of
  lm-eval, transformers and (for vllm) vLLM.

Entries are written atomically (a crash leaves no half entry) and never modified; deleting the directory
is always safe.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from harness.paths import cache_dir
from harness.runs.io import atomic_dir, atomic_write_json, read_jsonl
from harness.runs.layout import parse_samples_file_name, samples_file_name

# lm-eval's per-document logs of one entry, by (task, run index): run i > 0 is Avg@k's run i.
Samples = dict[tuple[str, int], list[dict[str, Any]]]

# Files a Trainer checkpoint holds besides the model: they do not change the model's outputs.
_NOT_MODEL_FILES = {
    "optimizer.pt",
    "scheduler.pt",
    "trainer_state.json",
    "training_args.bin",
    "scaler.pt",
}
_NOT_MODEL_PREFIXES = ("rng_state", "events.out.tfevents")


def canonical_hash(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _file_sha256(path: Path, memo: dict[str, Any]) -> str:
    """SHA-256 of a file, memoised by (path, size, mtime, inode) so a 15 GB checkpoint is read only once."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if stamp in memo:
        return memo[stamp]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    memo[stamp] = h.hexdigest()
    return memo[stamp]


def checkpoint_hash(model: str) -> str | None:
    """Content hash of a local model directory (every file except trainer state); None if ``model`` is not
    a local directory (a Hub name is looked up in the local Hub cache, offline; None when not there)."""
    path = Path(model)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, local_files_only=True))
        except Exception:  # not a Hub name, or not downloaded: no stable identity, no caching
            return None
    memo_file = eval_cache_dir() / "file_hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.name not in _NOT_MODEL_FILES and not p.name.startswith(_NOT_MODEL_PREFIXES)
    )
    digest = canonical_hash({str(p.relative_to(path)): _file_sha256(p, memo) for p in files})
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo_file, memo)
    except OSError:  # a read-only cache only costs re-hashing next time
        pass
    return digest


# ------------------------------------------------------------------------------------ task identity


def stable(obj: Any) -> Any:
    """A JSON-able, process-independent rendering of a task config (functions by module, name, source)."""
    if isinstance(obj, dict):
        return {str(k): stable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [stable(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if callable(obj):
        try:
            src = inspect.getsource(obj)
        except (OSError, TypeError):
            src = ""
        name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
        return f"{name}#{hashlib.sha256(src.encode()).hexdigest()[:16]}"
    return str(obj)


def _docs_hash(docs: Any) -> str:
    h = hashlib.sha256()
    if docs is not None:
        for doc in docs:
            h.update(json.dumps(doc, sort_keys=True, default=str).encode())
            h.update(b"\n")
    return h.hexdigest()


def task_hash(task: Any) -> str:
    """Identity of an lm-eval task as it will run: its resolved config (after our overrides) and the
    content of its evaluation and few-shot documents. Computed before any model is loaded."""
    config = stable(task.dump_config())
    if isinstance(config.get("metadata"), dict):
        config["metadata"].pop("pretrained", None)  # the model is keyed by content, not by path
    return hashlib.sha256(
        json.dumps(
            {
                "config": config,
                "docs": _docs_hash(task.eval_docs),
                "fewshot": _docs_hash(task.fewshot_docs()),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()


# -------------------------------------------------------------------------------------------- store


def eval_cache_dir() -> Path:
    """``$OTR_HARNESS_EVAL_CACHE`` (e.g. a shared disk for a team), else ``<cache>/eval``."""
    env = os.environ.get("OTR_HARNESS_EVAL_CACHE")
    return Path(env).resolve() if env else cache_dir() / "eval"


# entry.json names each samples file by the part between prefix and suffix ("<task>" or "<task>@<i>"), as
# earlier versions wrote it: a cache shared between harness versions stays readable both ways.
_ENTRY_FILE = "entry.json"
_PREFIX, _SUFFIX = samples_file_name("TASK").split("TASK")


def _sample_name(task: str, run_index: int) -> str:
    return samples_file_name(task, run_index).removeprefix(_PREFIX).removesuffix(_SUFFIX)


def _sample_file(name: str) -> tuple[str, tuple[str, int]]:
    """The file name of an entry.json sample name, and its (task, run index)."""
    file = f"{_PREFIX}{name}{_SUFFIX}"
    parsed = parse_samples_file_name(file)
    if parsed is None:
        raise ValueError(f"evaluation cache: bad sample name {name!r}")
    return file, parsed


class EvalCache:
    """Results of finished evaluations, by key, under ``root`` (default: :func:`eval_cache_dir`)."""

    def __init__(self, root: Path | None = None):
        self.root = root or eval_cache_dir()

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> tuple[dict[str, Any], Samples] | None:
        """(record, samples) stored under ``key``, or None."""
        d = self._dir(key)
        entry = d / _ENTRY_FILE
        if not entry.is_file():
            return None
        record = json.loads(entry.read_text())
        samples: Samples = {}
        for name in record["sample_files"]:
            file, key_ = _sample_file(name)
            samples[key_] = read_jsonl(d / file)
        return record["record"], samples

    def put(self, key: str, record: dict[str, Any], samples: Samples) -> None:
        """Store an entry (atomically; an existing entry under the same key is left as is)."""
        d = self._dir(key)
        if (d / _ENTRY_FILE).is_file():
            return
        d.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(_sample_name(task, i) for task, i in samples)
        with atomic_dir(d) as tmp:
            write_samples(tmp, samples)
            atomic_write_json(tmp / _ENTRY_FILE, {"record": record, "sample_files": names})


def write_samples(directory: Path, samples: Samples) -> None:
    """lm-eval's per-document logs, one JSONL file per (task, run index), named by the run layout."""
    for (task, run_index), rows in samples.items():
        with (directory / samples_file_name(task, run_index)).open("w") as f:
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
