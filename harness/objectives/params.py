"""The torch-free half of the objectives room: names, parameters and conventions.

Everything the config layer needs while it *plans* a sweep (which objectives exist, which parameters
each takes and their defaults, whether it samples and how many tokens per position) lives here, and
this module must never import torch or transformers: planning a sweep of hundreds of runs on a login
node must stay cheap. ``tests/test_objectives.py`` checks that in a fresh interpreter.

The formulas are in ``losses.py``; the machinery that evaluates them in ``engine.py``. The reference
for every parameter is ``/work/shared/reference/otr.md`` (cited as §1, §2): K, tau and beta are sweep
axes with the defaults stated there (K = 256, tau = 1.2, beta = -0.1).

Contract
--------
* ``available()`` -> sorted objective names.
* ``validate_params(name, params)`` -> a frozen pydantic model with the defaults filled in, or a
  one-line ``ValueError`` naming the objective, the field, what was wrong and the valid choices
  (``objective 'otr': k must be >= 1 (got 0)``). An unknown name also raises ``ValueError``.
* ``is_sampled(name)`` / ``samples_per_token(name, params)``: whether the objective draws tokens from
  the model, and how many per response token (K, or 0): compute accounting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

# Label convention shared by every objective: labels are aligned with the logits (the caller shifts),
# and this value marks a position that contributes nothing (prompt, padding).
IGNORE_INDEX = -100
# Diagnostics every objective reports (means over the non-ignored positions of a call), and the two
# that only sampled objectives add. Definitions: engine.py's module docstring.
METRICS = ("token_acc", "entropy", "p_gt", "nll")
SAMPLED_METRICS = ("draw_hit_rate", "no_hit_frac")


# ======================================================================================================
# Parameter models (validated by pydantic; the config layer calls ``validate_params`` before training)
# ======================================================================================================
class ObjectiveParams(BaseModel):
    """Base of every parameter model: unknown keys are errors, values are frozen and finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class NoParams(ObjectiveParams):
    """sft and dft take no parameters."""


class OTRParams(ObjectiveParams):
    """§1: K draws from softmax(z / tau) with replacement; reward 1 for x_t, beta otherwise."""

    k: int = Field(256, ge=1, validation_alias=AliasChoices("k", "K"), description="draws per position")
    tau: float = Field(1.2, gt=0, description="sampling temperature (log-probs stay at temperature 1)")
    beta: float = Field(-0.1, lt=1, description="reward of a wrong draw")


class OTRExactParams(ObjectiveParams):
    """§2: the K -> infinity expectation of ``otr`` (no sampling)."""

    tau: float = Field(1.2, gt=0)
    beta: float = Field(-0.1, lt=1)


class UnlikelihoodParams(ObjectiveParams):
    """Welleck et al. 2019, token level, with negatives drawn from the model (OTR's wrong draws)."""

    alpha: float = Field(1.0, ge=0, description="weight of the unlikelihood term")
    k: int = Field(16, ge=1, validation_alias=AliasChoices("k", "K"), description="draws per position")
    tau: float = Field(1.0, gt=0, description="temperature of the draws")


class LabelSmoothingParams(ObjectiveParams):
    """Cross-entropy against (1 - eps) e_x + eps / V."""

    eps: float = Field(0.1, ge=0, lt=1)


class EntropySFTParams(ObjectiveParams):
    """L = -log pi(x) - lambda * H(pi): lambda > 0 *rewards* entropy (keeps the policy spread out)."""

    lam: float = Field(0.01, ge=0, validation_alias=AliasChoices("lambda", "lam"), alias="lambda")


# ======================================================================================================
# Registry (torch-free): name -> parameters, sampled flag, one-line summary.
# losses.OBJECTIVES pairs each entry with its formula; the two registries have the same keys.
# ======================================================================================================
@dataclass(frozen=True)
class Spec:
    """What planning needs to know about one objective. ``sampled``: draws ``params.k`` tokens per
    position from softmax(z / ``params.tau``)."""

    name: str
    params: type[ObjectiveParams]
    sampled: bool = False
    summary: str = ""


SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec("sft", NoParams, summary="-log pi(x)"),
        Spec("otr", OTRParams, sampled=True, summary="REINFORCE over K draws from pi^(1/tau)"),
        Spec("otr_exact", OTRExactParams, summary="closed-form expectation of otr"),
        Spec("dft", NoParams, summary="-sg(pi(x)) log pi(x)"),
        Spec("unlikelihood", UnlikelihoodParams, sampled=True, summary="CE + sampled UL"),
        Spec("label_smoothing", LabelSmoothingParams, summary="CE vs smoothed target"),
        Spec("entropy_sft", EntropySFTParams, summary="-log pi(x) - lambda H"),
    ]
}


def available() -> list[str]:
    """Names of all objectives, sorted."""
    return sorted(SPECS)


def spec(name: str) -> Spec:
    """The registry entry of ``name``; ``ValueError`` listing the valid names if there is none."""
    if name not in SPECS:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(available())}")
    return SPECS[name]


# ======================================================================================================
# Validation and its one-line error messages
# ======================================================================================================
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}


def _field_names(model: type[ObjectiveParams]) -> list[str]:
    """The names a user writes for the fields of ``model`` (aliases where they exist), sorted."""
    return sorted(f.alias or n for n, f in model.model_fields.items())


def _describe(err: dict, fields: list[str]) -> str:
    """One pydantic error as ``<field> must be >= 1 (got 0)`` / ``unknown parameter 'kk'; valid: ...``."""
    loc = ".".join(str(x) for x in err["loc"]) or "params"
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "extra_forbidden":
        return f"unknown parameter {loc!r}; valid: {', '.join(fields) or '(none)'}"
    if kind in _BOUNDS:
        limit = next(iter(ctx.values()))
        return f"{loc} must be {_BOUNDS[kind]} {limit} (got {err['input']!r})"
    msg = err["msg"]
    return f"{loc}: {msg[0].lower() + msg[1:]} (got {err['input']!r})"


def validate_params(name: str, params: dict[str, Any] | ObjectiveParams | None = None) -> ObjectiveParams:
    """Validate ``params`` for objective ``name``; return the frozen params model (defaults filled in).

    An instance of the objective's own model is returned as is. Raises ``ValueError`` with a one-line
    message naming the objective, the field, what was wrong and the valid choices, e.g.
    ``objective 'otr': k must be >= 1 (got 0)``.
    """
    model = spec(name).params
    if isinstance(params, model):
        return params
    try:
        return model.model_validate(dict(params or {}))
    except ValidationError as e:
        fields = _field_names(model)
        msgs = "; ".join(_describe(err, fields) for err in e.errors())
        raise ValueError(f"objective {name!r}: {msgs}") from None


def is_sampled(name: str) -> bool:
    """True for objectives that draw tokens from the model (``otr``, ``unlikelihood``)."""
    return spec(name).sampled


def samples_per_token(name: str, params: dict[str, Any] | ObjectiveParams | None = None) -> int:
    """Tokens sampled per response token (K for sampled objectives, 0 otherwise): compute accounting."""
    prm = validate_params(name, params)
    return int(prm.k) if spec(name).sampled else 0


__all__ = [
    "IGNORE_INDEX",
    "METRICS",
    "SAMPLED_METRICS",
    "SPECS",
    "EntropySFTParams",
    "LabelSmoothingParams",
    "NoParams",
    "OTRExactParams",
    "OTRParams",
    "ObjectiveParams",
    "Spec",
    "UnlikelihoodParams",
    "available",
    "is_sampled",
    "samples_per_token",
    "spec",
    "validate_params",
]
