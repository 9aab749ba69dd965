"""Shared test set-up: offline Hugging Face, and the tiny toy world (built once per cache, content-hashed)."""

from __future__ import annotations

import os

import pytest

# The toy world is local: make any accidental Hub access fail fast instead of waiting on a network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_toy():
    """The ``tiny`` toy world (built into the shared cache once; quality irrelevant, shapes real)."""
    from harness import toy

    cfg = toy.ToyConfig.preset("tiny")
    return cfg, toy.build(cfg, progress=False)
