"""Checkpoints on disk: which one a re-run resumes from, and what a killed attempt left that must go.

transformers' ``Trainer`` writes ``train/checkpoint-<step>/`` itself; the harness adds its token counters
(``harness_counters.json``) last, after transformers has written everything else, so a checkpoint is
*complete* exactly when that file is in it. A kill mid-save leaves a torn checkpoint without it: it is
skipped and removed, and the log lines after the resume point are dropped (they will be redone).

Names come from ``harness.runs.layout`` (``CHECKPOINT_PREFIX`` must be the prefix transformers uses;
``tests/test_train.py`` checks it). Only the main process calls the functions that write or delete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from harness.runs.io import atomic_write_json, atomic_write_text, read_jsonl
from harness.runs.layout import (
    COUNTERS_FILE,
    checkpoint_dir,
    checkpoint_dirs,
    checkpoint_step,
)

log = logging.getLogger(__name__)


def checkpoint_path(train_dir: Path, step: int) -> Path:
    """The directory the Trainer writes the checkpoint of optimizer step ``step`` into."""
    return checkpoint_dir(train_dir, step)


def write_counters(
    checkpoint: Path, tokens_seen: int, sampled_tokens: int, generated_tokens: int | None = None
) -> None:
    """Write the run's cumulative token counters into ``checkpoint``: this marks it complete, so call it
    only after everything else of the checkpoint is on disk. ``generated_tokens``: GRPO's completion
    tokens (written only when given, so token-level runs keep their two counters)."""
    counters = {"tokens_seen": tokens_seen, "sampled_tokens": sampled_tokens}
    if generated_tokens is not None:
        counters["generated_tokens"] = generated_tokens
    atomic_write_json(Path(checkpoint) / COUNTERS_FILE, counters)


def read_counters(checkpoint: Path) -> tuple[int, int]:
    """``(tokens_seen, sampled_tokens)`` saved in a complete checkpoint."""
    counters = json.loads((Path(checkpoint) / COUNTERS_FILE).read_text())
    return counters["tokens_seen"], counters["sampled_tokens"]


def read_generated_tokens(checkpoint: Path) -> int:
    """GRPO's cumulative generated tokens saved in a complete checkpoint (0 when it has none)."""
    counters = json.loads((Path(checkpoint) / COUNTERS_FILE).read_text())
    return int(counters.get("generated_tokens", 0))


def _numbered(train_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` directories with a numeric step, oldest first (others are not ours)."""
    if not Path(train_dir).is_dir():
        return []
    return [p for p in checkpoint_dirs(train_dir) if checkpoint_step(p) is not None]


def last_complete_checkpoint(train_dir: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` that holds its counters file (i.e. was completely written), or None."""
    complete = [p for p in _numbered(train_dir) if (p / COUNTERS_FILE).is_file()]
    return complete[-1] if complete else None


def remove_torn_checkpoints(train_dir: Path, keep: Path | None) -> None:
    """Delete checkpoints newer than ``keep`` (the resume point): torn by a kill mid-save, or to be redone."""
    upto = checkpoint_step(keep) if keep else -1
    for p in _numbered(train_dir):
        if checkpoint_step(p) > upto:
            log.warning("removing incomplete checkpoint %s (killed while it was written)", p)
            shutil.rmtree(p)


def truncate_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop log lines written after the checkpoint we resume from (they will be redone)."""
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= upto_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
