"""Token-level objectives (see engine.py)."""

from harness.objectives.engine import *  # noqa: F403
