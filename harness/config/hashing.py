"""The run id's hash: a content hash of a resolved run config, stable across harness versions.

A run's directory name ends in ``config_hash(...)[:8]``, so the hash of an existing run must never change:
fields added after the first release are left out while at their default (``_HASH_OMIT_AT_DEFAULT``), and
a renamed default is hashed as its old value (``_HASH_LEGACY_VALUES``). A new ``RunConfig`` field with a
default belongs in ``_HASH_OMIT_AT_DEFAULT``, or every existing run id changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# (dotted path in RunConfig.model_dump(), default): omitted from config_hash() while at that default.
_HASH_OMIT_AT_DEFAULT: list[tuple[tuple[str, ...], Any]] = [
    (("loss_normalization",), "tokens"),
    (("dataset", "messages_field"), None),
    (("dataset", "chat_template"), None),
    (("dataset", "packing"), False),
    (("dataset", "drop_all_prompt"), False),
    (("lora",), None),
    (("launcher",), None),
    (("model_dtype",), "float32"),
    (("attn_implementation",), None),
    (("training_path",), "fused"),  # same run on either path (same loss to float noise): ids kept
    (("eval", "tensor_parallel_size"), 1),
    (("eval", "data_parallel_size"), 1),
    (("eval", "gpu_memory_utilization"), 0.9),
    (("eval", "max_model_len"), None),
    (("eval", "model_args"), {}),
    (("eval", "allow_unsafe_code"), False),
    (("eval", "sandbox"), "auto"),
    (("eval", "cache"), True),
    (("eval", "dataset_overrides"), {}),
    (("eval", "max_samples"), None),
    (("eval", "max_gen_toks"), None),
]
# (dotted path, value, hashed as): `eval.backend` defaulted to "hf" before "auto" existed; "auto" is
# hashed as "hf" so that existing run ids did not change.
_HASH_LEGACY_VALUES: list[tuple[tuple[str, ...], Any, Any]] = [
    (("eval", "backend"), "auto", "hf"),
]


def config_hash(data: dict[str, Any]) -> str:
    """Content hash (10 hex digits) of ``RunConfig.model_dump(mode="json")``; ``data`` is edited in place."""
    # Fields added after the first release are left out while at their default, so that adding them
    # did not change the identity (the directory) of existing runs.
    for path, default in _HASH_OMIT_AT_DEFAULT:
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parent.get(path[-1], default) == default:
            parent.pop(path[-1], None)
    for path, value, hashed_as in _HASH_LEGACY_VALUES:
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parent.get(path[-1]) == value:
            parent[path[-1]] = hashed_as
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
