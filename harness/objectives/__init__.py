"""Token-level training objectives: SFT, One-Token Rollout (OTR) and their neighbours.

The leaf room of the harness: pure math, no I/O, no configs, no Trainer, no import of other rooms.
Definitions: ``/work/shared/reference/otr.md``.

Modules
-------
* ``params``    names, parameter models, validation, sampling accounting, which objectives need the
  frozen reference model (``needs_reference``). Torch-free.
* ``losses``    the formulas: each objective's closed-form (loss, dL/dz) per row of logits; ``OBJECTIVES``.
* ``engine``    the chunked / tiled autograd machinery that evaluates them: ``compute``,
  ``compute_from_hidden``, ``ObjectiveOutput``, ``merge_metrics``; its chunk loop is ``chunks``.
* ``reference`` the same objectives as plain formulas through torch autograd on full logits: the tests'
  oracle, and a second implementation.

Implementations
---------------
``compute`` and ``compute_from_hidden`` take ``implementation="engine"`` (default: chunked, closed-form
gradients, as cheap as SFT) or ``implementation="reference"`` (plain autograd, ``[N, V]`` temporaries).
Both modules expose functions of the same signature and contract (engine.py's docstring), so
``objectives.reference.compute(...)`` is the same as ``objectives.compute(..., implementation="reference")``.

Import cost
-----------
``import harness.objectives`` does not import torch: the config layer validates objective parameters
while planning a sweep, which must stay torch-free (cheap on a login node, no CUDA initialisation). The
torch-free names come eagerly from ``params``; the others are loaded on first access (PEP 562).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from harness.objectives.params import (
    IGNORE_INDEX,
    METRICS,
    REFERENCE_METRICS,
    SAMPLED_METRICS,
    available,
    is_sampled,
    needs_reference,
    samples_per_token,
    validate_params,
)

if TYPE_CHECKING:  # for type checkers only: at run time these are loaded lazily by __getattr__
    import torch

    from harness.objectives.engine import ObjectiveOutput, merge_metrics
    from harness.objectives.losses import OBJECTIVES, Objective, Rows

IMPLEMENTATIONS = ("engine", "reference")

# Names that need torch, and the submodule each comes from: imported on first access only, because
# planning a sweep imports this package (to validate parameters) and must stay torch-free.
_LAZY = {
    "ObjectiveOutput": "engine",
    "merge_metrics": "engine",
    "OBJECTIVES": "losses",
    "Objective": "losses",
    "Rows": "losses",
}
_SUBMODULES = ("chunks", "engine", "losses", "params", "reference")


def _implementation(implementation: str) -> ModuleType:
    """The module (``engine`` or ``reference``) that implements ``implementation``."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; valid: {', '.join(IMPLEMENTATIONS)}")
    return importlib.import_module(f"{__name__}.{implementation}")


def compute(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    implementation: str = "engine",
    ref_logits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    return_draws: bool = False,
    **params: Any,
) -> ObjectiveOutput:
    """Objective ``name`` on ``logits`` [..., V] and aligned ``labels`` [...] (-100 = ignored).

    Returns the loss SUM over non-ignored positions, their count and per-token mean metrics; the full
    contract is in engine.py's docstring. ``implementation`` selects ``engine`` (default) or
    ``reference``; both give the same results, draws included, for the same ``generator`` state.
    ``ref_logits`` [..., V]: the frozen reference model's logits, for (and only for) objectives that
    ``needs_reference`` (``asft``).
    """
    return _implementation(implementation).compute(
        name, logits, labels, ref_logits=ref_logits, generator=generator, chunk_size=chunk_size,
        return_draws=return_draws, **params,
    )  # fmt: skip


def compute_from_hidden(
    name: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    implementation: str = "engine",
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    ref_softcap: float | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    return_draws: bool = False,
    **params: Any,
) -> ObjectiveOutput:
    """Same as ``compute(name, hidden @ weight.T + bias, labels, ...)`` (logits soft-capped as
    ``softcap * tanh(z / softcap)`` when ``softcap`` is given); the engine never materialises the logits
    (one ``[chunk, V]`` tile at a time). Reference objectives take the reference model's final hidden
    states and head (``ref_hidden``, ``ref_weight``, ``ref_bias``, ``ref_softcap``), through which the
    engine builds the reference's logits in the same tiles. See ``engine.compute_from_hidden``."""
    return _implementation(implementation).compute_from_hidden(
        name, hidden, weight, labels, bias=bias, softcap=softcap, ref_hidden=ref_hidden, ref_weight=ref_weight,
        ref_bias=ref_bias, ref_softcap=ref_softcap, generator=generator, chunk_size=chunk_size,
        return_draws=return_draws, **params,
    )  # fmt: skip


def __getattr__(name: str) -> Any:
    """PEP 562: load the torch-dependent names (and submodules) on first access, then cache them."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "IGNORE_INDEX",
    "IMPLEMENTATIONS",
    "METRICS",
    "OBJECTIVES",
    "REFERENCE_METRICS",
    "SAMPLED_METRICS",
    "Objective",
    "ObjectiveOutput",
    "Rows",
    "available",
    "compute",
    "compute_from_hidden",
    "is_sampled",
    "merge_metrics",
    "needs_reference",
    "samples_per_token",
    "validate_params",
]
