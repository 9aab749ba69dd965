"""training room: the recipe (``recipe.train``), the Trainer (``trainer``), the fused LM head (``fused``).

The public names for one's own training code are exported here, loaded on first access (PEP 562), so
that importing a submodule (e.g. ``harness.training.data``) does not import the others:

* ``fused_loss(model, batch, name, generator=None, **params)``: one objective on one batch through the
  model's fused LM head, for a plain PyTorch loop (``fused.py``).
* ``FusedObjectiveMixin``: ``class T(FusedObjectiveMixin, Trainer)`` or ``(..., trl.SFTTrainer)``: the
  Trainer's loss becomes the objective, one forward per micro-batch (``dropin.py``).
* ``enable_fused_objective``, ``FusedObjective``, ``FusedHeadError``, ``shift_labels`` (``fused.py``).

They live here and not in ``harness.objectives`` because the objectives room is pure math and imports no
other room; ``harness.training`` is the room that knows models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.training.dropin import FusedObjectiveMixin
    from harness.training.fused import (
        FusedHeadError,
        FusedObjective,
        enable_fused_objective,
        fused_loss,
        shift_labels,
    )

_LAZY = {
    "fused_loss": "fused",
    "enable_fused_objective": "fused",
    "FusedObjective": "fused",
    "FusedHeadError": "fused",
    "shift_labels": "fused",
    "FusedObjectiveMixin": "dropin",
}
__all__ = [
    "FusedHeadError",
    "FusedObjective",
    "FusedObjectiveMixin",
    "enable_fused_objective",
    "fused_loss",
    "shift_labels",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
