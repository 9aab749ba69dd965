"""Shared test set-up: offline Hugging Face, the tiny toy world, and the two tiers.

Tiers: ``-m "not slow"`` (``make test-fast``) is every test that builds no toy world, trains no model and
starts no server; ``make test`` runs everything. A test is slow when it is marked so, or — automatically,
here — when it uses the ``tiny_toy`` fixture (directly or through another fixture) or lives in a module that
starts a server (``SERVER_MODULES``). In the fast tier a test that would pre-train a toy world anyway fails
with the message to use ``tiny_toy``, so the tiers cannot drift apart silently.
"""

from __future__ import annotations

import os

import pytest

# The toy world is local: make any accidental Hub access fail fast instead of waiting on a network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Modules whose tests start a server (a SLURM cluster, a vLLM engine): slow as a whole.
SERVER_MODULES = {"test_slurm", "test_vllm"}
# Fixtures that build (or load) the tiny toy world.
WORLD_FIXTURES = {"tiny_toy"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in SERVER_MODULES or WORLD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tier_builds_no_world(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a test not marked slow, pre-training a toy world is an error that names the fix."""
    if request.node.get_closest_marker("slow") is not None:
        return
    from harness.toy import world

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} pre-trains a toy world but is not marked slow: use the tiny_toy fixture "
            "(marked slow automatically) or @pytest.mark.slow"
        )

    monkeypatch.setattr(world, "_build_into", refuse)


@pytest.fixture(scope="session")
def tiny_toy():
    """The ``tiny`` toy world (built into the shared cache once; quality irrelevant, shapes real)."""
    from harness import toy

    cfg = toy.ToyConfig.preset("tiny")
    return cfg, toy.build(cfg, progress=False)
