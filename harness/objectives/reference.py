"""The reference implementation: every objective as a plain formula, differentiated by torch autograd.

Written straight from ``/work/shared/reference/otr.md`` (§1, §2), independently of ``losses.py``: full
``log_softmax`` over all positions, no chunks, no in-place tricks, no hand-written gradients. It is the
oracle the engine is tested against, and an implementation in its own right (slow, memory-hungry:
``[N, V]`` temporaries that autograd keeps for the backward pass), selectable anywhere the engine is:

    from harness import objectives
    objectives.compute(name, logits, labels, implementation="reference", **params)
    # or directly, same signature as engine.compute:
    from harness.objectives import reference
    reference.compute(name, logits, labels, generator=g, **params)

Contract: the same as ``engine.compute`` / ``engine.compute_from_hidden`` (see engine.py): same
arguments, same validation and error messages, same ``ObjectiveOutput`` (loss SUM, ``num_tokens``,
metrics MEANS, optional ``draws``); ``chunk_size`` is accepted and checked but means nothing here.
Given the same generator state a sampled objective consumes the same random numbers as the engine (one
``torch.rand(N, K)`` up front, a row per non-ignored position) and maps them to tokens by inverse CDF
of softmax(z / tau), so the draws, hence the losses and gradients, match the engine's. The CDF is
rounded differently, so a uniform within rounding error of a CDF step may pick the neighbouring token:
never observed in fp64, conceivable (and harmless) in fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.objectives.engine import ObjectiveOutput, check_ref_hidden, check_reference, check_softcap
from harness.objectives.losses import UL_MIN_COMPLEMENT
from harness.objectives.params import (
    IGNORE_INDEX,
    METRICS,
    REFERENCE_METRICS,
    SAMPLED_METRICS,
    ObjectiveParams,
    is_sampled,
    needs_reference,
    validate_params,
)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else (bf16, fp16, fp32) is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kl_ref(z: torch.Tensor, ref_z: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi) per row ``[n]``, written as LLaMA-Factory's ASFT writes it:
    ``F.kl_div(log_softmax(z), softmax(ref_z))`` = sum_v pi_ref(v) (log pi_ref(v) - log pi(v))."""
    log_p = torch.log_softmax(z, -1)
    q = torch.softmax(ref_z.detach(), -1)
    return torch.nn.functional.kl_div(log_p, q, reduction="none").sum(-1)


def per_token_loss(
    name: str,
    z: torch.Tensor,
    x: torch.Tensor,
    draws: torch.Tensor | None,
    params: ObjectiveParams,
    ref_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-position loss L_t ``[n]`` of objective ``name`` from logits ``z`` [n, V], labels ``x`` [n].

    ``draws`` [n, K]: the sampled token ids (sampled objectives only); ``params``: the validated model;
    ``ref_z`` [n, V]: the reference model's logits (reference objectives only).
    Constants (rewards, sg weights, pi', pi_ref) are ``detach()``ed, so autograd gives the objective's
    gradient.
    """
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    logp_x = logp.gather(1, x[:, None]).squeeze(1)
    if name == "sft":  # -log pi(x)
        return -logp_x
    if name == "dft":  # -sg(pi(x)) log pi(x)
        return -logp_x.exp().detach() * logp_x
    if name == "otr":  # §1: -(1/K) sum_k R(a_k, x) log pi(a_k), R = 1 if a_k == x else beta
        reward = torch.where(draws == x[:, None], 1.0, params.beta).to(z.dtype)
        return -(reward * logp.gather(1, draws)).mean(1)
    if name == "otr_exact":  # §2: -sum_a sg(pi'(a)) R(a, x) log pi(a), pi' = softmax(z / tau)
        pt = torch.softmax(z.detach() / params.tau, -1)
        reward = torch.full_like(pt, params.beta).scatter(1, x[:, None], 1.0)
        return -(pt * reward * logp).sum(1)
    if name == "unlikelihood":  # -log pi(x) - alpha sum_{c in C} log(1 - pi(c)), C = distinct draws != x
        negative = torch.zeros_like(p, dtype=torch.bool).scatter(1, draws, True)
        negative.scatter_(1, x[:, None], False)
        ul = torch.log(torch.clamp(1 - p, min=UL_MIN_COMPLEMENT)) * negative
        return -logp_x - params.alpha * ul.sum(1)
    if name == "label_smoothing":  # cross-entropy against (1 - eps) e_x + eps / V
        return -(1 - params.eps) * logp_x - params.eps / z.shape[1] * logp.sum(1)
    if name == "entropy_sft":  # -log pi(x) - lambda H(pi)
        return -logp_x + params.lam * (p * logp).sum(1)
    if name == "asft":  # DFT + alpha KL(pi_ref || pi)  (LLaMA-Factory's use_asft_loss)
        return -logp_x.exp().detach() * logp_x + params.alpha * kl_ref(z, ref_z)
    raise ValueError(f"no reference formula for objective {name!r}")


def reference_loss(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    draws: torch.Tensor | None = None,
    params: dict[str, Any] | ObjectiveParams | None = None,
    ref_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """SUM over non-ignored positions of objective ``name``'s loss, differentiable by plain autograd.

    ``logits`` [..., V], ``labels`` [...] aligned (-100 = ignored); ``draws`` [N, K] the sampled ids of
    the N non-ignored positions in row-major order (required for sampled objectives, e.g. an engine
    output's ``draws``); ``params`` as for ``validate_params``; ``ref_logits`` [..., V] the reference
    model's logits (reference objectives only). Computed in the logits' dtype.
    """
    prm = validate_params(name, params)
    if is_sampled(name) and draws is None:
        raise ValueError(f"objective {name!r} samples: reference_loss needs its draws")
    check_reference(name, ref_logits is not None, "ref_logits=")
    mask = labels != IGNORE_INDEX
    ref_z = ref_logits[mask] if ref_logits is not None else None
    return per_token_loss(name, logits[mask], labels[mask].long(), draws, prm, ref_z).sum()


def sample(z: torch.Tensor, tau: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws from softmax(z / tau): ``uniforms`` [n, K] in [0, 1) -> token ids [n, K].

    Token i is drawn when cdf[i - 1] <= u * cdf[-1] < cdf[i] (unnormalised CDF), so a token of
    probability 0 is never drawn; the engine uses the same rule.
    """
    with torch.no_grad():
        cdf = torch.exp((z - z.amax(-1, keepdim=True)) / tau).cumsum(-1)
        total = cdf[:, -1:]
        u = torch.minimum(uniforms.to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)


def _metrics(
    z: torch.Tensor, x: torch.Tensor, draws: torch.Tensor | None, k: int, ref_z: torch.Tensor | None
) -> dict[str, float]:
    """The metrics of engine.py's docstring, as plain means (0.0 without positions)."""
    n = z.shape[0]
    with torch.no_grad():
        logp = torch.log_softmax(z, -1)
        logp_x = logp.gather(1, x[:, None]).squeeze(1)
        vals = {
            "token_acc": (z.gather(1, x[:, None]).squeeze(1) >= z.amax(-1)).to(z.dtype),
            "entropy": -(logp.exp() * logp).sum(1),
            "p_gt": logp_x.exp(),
            "nll": -logp_x,
        }
        if draws is not None:
            hits = (draws == x[:, None]).sum(1).to(z.dtype)
            vals |= {"draw_hit_rate": hits / k, "no_hit_frac": (hits == 0).to(z.dtype)}
        if ref_z is not None:
            vals["kl_ref"] = kl_ref(z, ref_z)
    names = METRICS + (SAMPLED_METRICS if draws is not None else ())
    names += REFERENCE_METRICS if ref_z is not None else ()
    return {m: float(vals[m].sum()) / n if n else 0.0 for m in names}


def compute(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_logits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    return_draws: bool = False,
    **params: Any,
) -> ObjectiveOutput:
    """Drop-in for ``engine.compute`` through plain autograd on the full logits (see the module doc).

    The returned ``loss`` is the SUM over non-ignored positions, in fp32 (fp64 for fp64 logits), and
    backpropagates into ``logits`` as often as autograd allows (never into ``ref_logits``).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align")
    check_reference(name, ref_logits is not None, "ref_logits=")
    if ref_logits is not None and ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits {tuple(ref_logits.shape)} and logits {tuple(logits.shape)} differ")
    prm = validate_params(name, params)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None (got {chunk_size})")
    vocab = logits.shape[-1]
    mask = (labels != IGNORE_INDEX).to(logits.device)
    x = labels.to(logits.device)[mask].long()
    if x.numel() and bool(((x < 0) | (x >= vocab)).any()):
        raise ValueError(f"labels must be in [0, {vocab}) or {IGNORE_INDEX}")
    z = logits[mask].to(_compute_dtype(logits.dtype))
    draws = None
    if is_sampled(name):  # the engine's protocol: all uniforms up front, on the generator's device
        gen_device = generator.device if generator is not None else logits.device
        uniforms = torch.rand(x.numel(), prm.k, generator=generator, device=gen_device).to(logits.device)
        draws = sample(z.detach(), prm.tau, uniforms)
    ref_z = None
    if needs_reference(name):
        ref_z = ref_logits.detach()[mask.to(ref_logits.device)].to(z.device, z.dtype)
    loss = per_token_loss(name, z, x, draws, prm, ref_z).sum()
    return ObjectiveOutput(
        loss=loss,
        num_tokens=int(x.numel()),
        metrics=_metrics(z.detach(), x, draws, getattr(prm, "k", 0), ref_z),
        draws=draws if return_draws else None,
    )


def compute_from_hidden(
    name: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
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
    """Drop-in for ``engine.compute_from_hidden``: ``compute`` on ``F.linear(hidden, weight, bias)``,
    soft-capped as Gemma 2/3 do (``softcap * tanh(logits / softcap)``) when ``softcap`` is given; the
    reference's logits likewise from ``ref_hidden``, ``ref_weight``, ``ref_bias``, ``ref_softcap``."""
    if hidden.shape[:-1] != labels.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and labels {tuple(labels.shape)} "
            "do not align"
        )
    check_softcap(softcap)
    check_softcap(ref_softcap, "ref_softcap")
    check_reference(name, ref_hidden is not None or ref_weight is not None, "ref_hidden= and ref_weight=")
    check_ref_hidden(hidden, weight, ref_hidden, ref_weight)
    logits = _head(hidden, weight, bias, softcap)
    ref_logits = None
    if ref_hidden is not None:
        with torch.no_grad():
            ref_logits = _head(ref_hidden, ref_weight, ref_bias, ref_softcap)
    return compute(
        name, logits, labels, ref_logits=ref_logits, generator=generator, chunk_size=chunk_size,
        return_draws=return_draws, **params,
    )  # fmt: skip


def _head(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    """The logits ``F.linear(hidden, weight, bias)``, soft-capped (``softcap * tanh(z / softcap)``)."""
    logits = torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias)
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


__all__ = ["compute", "compute_from_hidden", "kl_ref", "per_token_loss", "reference_loss", "sample"]
