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
* ``available()`` -> sorted objective names (token-level: each has a formula in ``losses.py``).
* ``methods()`` -> every name ``objective.name`` accepts: ``available()``, then the methods another
  trainer runs (``TRAINER_SPECS``: ``grpo``, TRL's GRPOTrainer); ``trainer_of(name)`` says which.
* ``validate_params(name, params)`` -> a frozen pydantic model with the defaults filled in, or a
  one-line ``ValueError`` naming the objective, the field, what was wrong and the valid choices
  (``objective 'otr': k must be >= 1 (got 0)``). An unknown name also raises ``ValueError``.
* ``is_sampled(name)`` / ``samples_per_token(name, params)``: whether the objective draws tokens from
  the model, and how many per response token (K, or 0): compute accounting.
* ``needs_reference(name)``: whether the objective needs the frozen reference model's logits (``asft``):
  the trainer then loads the run's base model once beside the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

# Label convention shared by every objective: labels are aligned with the logits (the caller shifts),
# and this value marks a position that contributes nothing (prompt, padding).
IGNORE_INDEX = -100
# Diagnostics every objective reports (means over the non-ignored positions of a call), and the two
# that only sampled objectives add. Definitions: engine.py's module docstring.
METRICS = ("token_acc", "entropy", "p_gt", "nll")
SAMPLED_METRICS = ("draw_hit_rate", "no_hit_frac")
# The diagnostic objectives anchored to a frozen reference model add: KL(pi_ref || pi) per position.
REFERENCE_METRICS = ("kl_ref",)


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


class ASFTParams(ObjectiveParams):
    """Anchored SFT (arXiv 2509.23753; LLaMA-Factory's ``use_asft_loss``): DFT + alpha KL(pi_ref || pi)."""

    alpha: float = Field(0.1, ge=0, description="weight of the KL anchor (LLaMA-Factory's asft_alpha)")


GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
GRPO_REWARDS = ("auto", "toy", "math_verify")


class GRPOParams(ObjectiveParams):
    """GRPO through TRL's ``GRPOTrainer`` (``harness/training/grpo.py``): not a token-level objective but a
    method with its own trainer. Per prompt, ``num_generations`` completions are sampled from the policy and
    scored by a verifiable reward against the example's reference answer; the advantages are the rewards
    normalised within each prompt's group. Names and defaults are ``trl.GRPOConfig``'s (TRL 1.16), except
    ``reward``, the harness's choice of reward: ``toy`` (the first ``#### N`` of the completion against the
    reference's, as the toy tasks score), ``math_verify`` (TRL's ``accuracy_reward``: math-verify on the
    ``\\boxed{}`` answer), ``auto`` (``toy`` for ``toy:`` datasets, else ``math_verify``).

    Batch sizes count completions, as in TRL: one optimizer step trains on ``per_device_train_batch_size``
    x ``gradient_accumulation_steps`` x processes completions, i.e. that / ``num_generations`` prompts.
    """

    num_generations: int = Field(8, ge=2, description="completions sampled per prompt (G)")
    max_completion_length: int = Field(512, ge=1, description="max new tokens per completion")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the initial policy (0: no reference model)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k filtering")
    num_iterations: int = Field(1, ge=1, description="optimizer steps per generated batch (mu)")
    epsilon: float = Field(0.2, gt=0, description="clipping range (lower; and upper unless epsilon_high)")
    epsilon_high: float | None = Field(None, gt=0)
    loss_type: Literal[GRPO_LOSS_TYPES] = "dapo"  # type: ignore[valid-type]
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = False
    reward: Literal[GRPO_REWARDS] = "auto"  # type: ignore[valid-type]
    use_vllm: bool = Field(False, description="generate with vLLM (GPU nodes); else transformers' generate")
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)


# ======================================================================================================
# Registry (torch-free): name -> parameters, sampled flag, one-line summary.
# losses.OBJECTIVES pairs each entry with its formula; the two registries have the same keys.
# ======================================================================================================
@dataclass(frozen=True)
class Spec:
    """What planning needs to know about one objective. ``sampled``: draws ``params.k`` tokens per
    position from softmax(z / ``params.tau``). ``reference``: needs the frozen reference model's logits
    (the run's base model, loaded once beside the policy)."""

    name: str
    params: type[ObjectiveParams]
    sampled: bool = False
    summary: str = ""
    reference: bool = False
    # Which trainer runs it: "objective" (the harness's Trainer with the formula in losses.OBJECTIVES) or
    # another one ("grpo": TRL's GRPOTrainer, harness/training/grpo.py), for methods with no formula.
    trainer: str = "objective"


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
        Spec("asft", ASFTParams, reference=True, summary="dft + alpha KL(pi_ref || pi)"),
    ]
}
# Methods a sweep names like an objective but that another trainer runs (``Spec.trainer``): no formula,
# so they stay out of SPECS (which losses.OBJECTIVES mirrors key for key).
TRAINER_SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec("grpo", GRPOParams, trainer="grpo", summary="TRL GRPOTrainer: G completions, verifiable reward"),
    ]
}


def available() -> list[str]:
    """Names of all token-level objectives (those with a formula), sorted."""
    return sorted(SPECS)


def methods() -> list[str]:
    """Every name ``objective.name`` accepts: the token-level objectives, sorted, then the trainer methods."""
    return available() + sorted(TRAINER_SPECS)


def spec(name: str) -> Spec:
    """The registry entry of ``name``; ``ValueError`` listing the valid names if there is none."""
    found = SPECS.get(name) or TRAINER_SPECS.get(name)
    if found is None:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(methods())}")
    return found


def trainer_of(name: str) -> str:
    """Which trainer runs ``name``: ``"objective"`` (the harness's) or e.g. ``"grpo"`` (TRL's)."""
    return spec(name).trainer


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


def needs_reference(name: str) -> bool:
    """True for objectives that need the frozen reference model's logits (``asft``)."""
    return spec(name).reference


def samples_per_token(name: str, params: dict[str, Any] | ObjectiveParams | None = None) -> int:
    """Tokens sampled per response token (K for sampled objectives, 0 otherwise): compute accounting."""
    prm = validate_params(name, params)
    return int(prm.k) if spec(name).sampled else 0


__all__ = [
    "IGNORE_INDEX",
    "METRICS",
    "REFERENCE_METRICS",
    "SAMPLED_METRICS",
    "SPECS",
    "ASFTParams",
    "GRPO_LOSS_TYPES",
    "GRPO_REWARDS",
    "TRAINER_SPECS",
    "EntropySFTParams",
    "GRPOParams",
    "LabelSmoothingParams",
    "NoParams",
    "OTRExactParams",
    "OTRParams",
    "ObjectiveParams",
    "Spec",
    "UnlikelihoodParams",
    "available",
    "is_sampled",
    "methods",
    "needs_reference",
    "samples_per_token",
    "spec",
    "trainer_of",
    "validate_params",
]
