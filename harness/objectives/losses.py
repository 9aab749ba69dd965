"""The formulas: every token-level objective as a closed-form (loss, dL/dz) of one row of logits.

This is the file to review. Every formula is written from ``/work/shared/reference/otr.md`` (cited as §1,
§2) and each function's docstring states the loss and its gradient with respect to the logits.
``reference.py`` restates the losses with plain autograd, and ``tests/test_objectives.py`` checks that
both agree on loss, gradient and metrics for every objective.

Notation: z = the logits of one position, pi = softmax(z) (temperature 1), x = its label, e_x = the
one-hot of x, sg = stop-gradient, pi' = softmax(z / tau) the sampling distribution of §1.

Contract of an objective function ``fn(rows: Rows, prm) -> (loss, grad)``
-------------------------------------------------------------------------
* ``rows`` holds one chunk of c non-ignored positions (see ``Rows``), ``prm`` the validated parameter
  model from ``params.py``.
* ``loss``: ``[c]``, the per-position loss L_t (the engine sums it; normalisation is the trainer's job).
* ``grad``: ``[c, V]`` dL_t/dz_t, or ``None`` when ``rows.need_grad`` is False. It may be (and usually
  is) ``rows.p`` or ``rows.logp`` overwritten in place: the engine owns those blocks and consumes the
  gradient before reusing them, so no objective allocates a ``[c, V]`` block of its own.
* No gradient flows through constants: rewards, draws and the weights marked sg are constants.
* Sampled objectives (``Spec.sampled``) get ``rows.draws`` ``[c, K]``: K ids drawn with replacement
  from pi' by the engine. They must not draw themselves, so results do not depend on the chunking.
* Reference objectives (``Spec.reference``) get ``rows.ref_logp`` ``[c, V]`` = log pi_ref(. | s_t), the
  frozen reference model's log-probs (an engine-owned block they may overwrite, like ``p``), and
  ``rows.kl_ref`` ``[c]`` = KL(pi_ref || pi) (the engine computes it: it is also a logged diagnostic).

``OBJECTIVES`` pairs each function with its entry in ``params.SPECS`` (parameters, sampled flag,
summary).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.objectives.params import (
    SPECS,
    ASFTParams,
    EntropySFTParams,
    LabelSmoothingParams,
    NoParams,
    ObjectiveParams,
    OTRExactParams,
    OTRParams,
    UnlikelihoodParams,
    spec,
)

# Unlikelihood: 1 - pi(c) is clamped here so log(1 - pi(c)) stays finite (Welleck et al. clamp at 1e-5).
UL_MIN_COMPLEMENT = 1e-6
# Elements per cache-sized scratch piece used by row-wise reductions (``_rowdot``, ``otr_exact``).
_ROWDOT_ELEMS = 2**20


@dataclass
class Rows:
    """One chunk of c response positions, everything in the compute dtype (fp32, or fp64 for fp64 input).

    ``logp`` and ``p`` are scratch blocks owned by the engine: an objective may overwrite them in place
    (that is how the gradient is built without another [c, V] block), but only after it has read them.
    """

    logp: torch.Tensor  # [c, V] log pi(. | s_t), temperature 1
    p: torch.Tensor  # [c, V] pi(. | s_t)
    target: torch.Tensor  # [c] int64, x_t
    logp_x: torch.Tensor  # [c] log pi(x_t)
    p_x: torch.Tensor  # [c] pi(x_t)
    entropy: torch.Tensor  # [c] H(pi(. | s_t)) in nats
    logp_max: torch.Tensor  # [c] max_v log pi(v)  (for overflow-free tempering)
    draws: torch.Tensor | None  # [c, K] int64 draws (sampled objectives only)
    need_grad: bool
    ref_logp: torch.Tensor | None = None  # [c, V] log pi_ref(. | s_t) (reference objectives only)
    kl_ref: torch.Tensor | None = None  # [c] KL(pi_ref || pi) (reference objectives only)


Result = tuple[torch.Tensor, torch.Tensor | None]


def _sub_at_target(g: torch.Tensor, target: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """g[i, x_i] -= w_i (in place): the -w * e_x part of a gradient."""
    w = torch.as_tensor(w, dtype=g.dtype, device=g.device).expand(target.shape[0])
    return g.scatter_add_(1, target[:, None], -w[:, None])


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[i, v] * b[i, v] through a small (~4 MB) scratch, not a [c, V] temporary.

    Row-wise multiply-then-sum over cache-sized pieces is ~2x faster on CPU than ``bmm`` / ``vecdot``.
    """
    c, vocab = a.shape
    rows = max(1, _ROWDOT_ELEMS // vocab)
    out = torch.empty(c, dtype=a.dtype, device=a.device)
    buf = torch.empty(min(rows, c), vocab, dtype=a.dtype, device=a.device)
    for i in range(0, c, rows):
        n = min(rows, c - i)
        torch.sum(torch.mul(a[i : i + n], b[i : i + n], out=buf[:n]), -1, out=out[i : i + n])
    return out


def kl_rows(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi) per row: sum_v pi_ref(v) (log pi_ref(v) - log pi(v)), ``[c]``, from two ``[c, V]``
    log-prob blocks (read only), through two small cache-sized scratches instead of ``[c, V]`` temporaries.
    """
    c, vocab = logp.shape
    rows = max(1, _ROWDOT_ELEMS // vocab)
    out = torch.empty(c, dtype=logp.dtype, device=logp.device)
    q = torch.empty(min(rows, c), vocab, dtype=logp.dtype, device=logp.device)
    diff = torch.empty_like(q)
    for i in range(0, c, rows):
        n = min(rows, c - i)
        torch.exp(ref_logp[i : i + n], out=q[:n])
        torch.sub(ref_logp[i : i + n], logp[i : i + n], out=diff[:n])
        torch.sum(diff[:n].mul_(q[:n]), -1, out=out[i : i + n])
    return out


def sft(r: Rows, prm: NoParams) -> Result:
    """Cross-entropy. L = -log pi(x).  dL/dz = pi - e_x."""
    loss = -r.logp_x
    return loss, _sub_at_target(r.p, r.target, 1.0) if r.need_grad else None


def dft(r: Rows, prm: NoParams) -> Result:
    """§2, DFT (arXiv 2508.05629). L = -sg(pi(x)) log pi(x).  dL/dz = pi(x) (pi - e_x)."""
    w = r.p_x  # a constant weight: no gradient flows through it
    loss = -w * r.logp_x
    if not r.need_grad:
        return loss, None
    return loss, _sub_at_target(r.p.mul_(w[:, None]), r.target, w)


def otr(r: Rows, prm: OTRParams) -> Result:
    """§1, One-Token Rollout: REINFORCE over K draws a_k ~ softmax(z / tau), rewards constant.

    L = -(1/K) sum_k R_k log pi(a_k),  R_k = 1 if a_k == x else beta  (log-probs at temperature 1,
    no baseline, no importance correction for tau != 1).
    dL/dz = (1/K) sum_k R_k (pi - e_{a_k}) = mean(R) pi - (1/K) sum_k R_k e_{a_k}.
    """
    a = r.draws
    reward = torch.where(a == r.target[:, None], 1.0, prm.beta).to(r.p.dtype)  # [c, K], constant
    loss = -(reward * r.logp.gather(1, a)).mean(1)
    if not r.need_grad:
        return loss, None
    grad = r.p.mul_(reward.mean(1, keepdim=True))
    return loss, grad.scatter_add_(1, a, reward.div_(-prm.k))


def otr_exact(r: Rows, prm: OTRExactParams) -> Result:
    """§2, exact OTR: the expectation of ``otr`` over the draws, in closed form (O(V) per token).

    L = -[pi'(x) log pi(x) + beta sum_{a != x} pi'(a) log pi(a)] = -sum_a w_a log pi(a),
    w_a = pi'(a) R(a, x) held constant, pi' = softmax(z / tau).
    dL/dz = W pi - w  with  W = sum_a w_a = beta + (1 - beta) pi'(x),
          = W pi - beta pi' - (1 - beta) pi'(x) e_x.
    tau = 1, beta = 0 gives DFT exactly; tau = 1, any beta gives (1 - beta) x DFT's gradient.
    """
    beta, tau, x = prm.beta, prm.tau, r.target[:, None]
    if tau == 1.0:  # pi' = pi: sum_a pi(a) log pi(a) = -H is known, and W pi - beta pi = (1 - beta) pi(x) pi
        pt_x, cross = r.p_x, -r.entropy
        loss = -((1 - beta) * pt_x * r.logp_x + beta * cross)
        if not r.need_grad:
            return loss, None
        grad = r.p.mul_(((1 - beta) * pt_x)[:, None])
        return loss, _sub_at_target(grad, r.target, (1 - beta) * pt_x)
    # tau != 1: pi' is built piece by piece (a few rows at a time) in a cache-sized scratch; each piece's
    # sums are taken and its gradient W pi - beta pi' finished in p's block while the piece is still in
    # cache. One exp pass over [c, V] and no [c, V] temporary: as cheap as one more softmax can be.
    c, vocab = r.logp.shape
    rows = max(1, _ROWDOT_ELEMS // vocab)
    buf = torch.empty(min(rows, c), vocab, dtype=r.p.dtype, device=r.p.device)
    scratch = torch.empty_like(buf)
    pt_x = torch.empty(c, dtype=r.p.dtype, device=r.p.device)
    cross = torch.empty_like(pt_x)
    for i in range(0, c, rows):
        j = min(c, i + rows)
        logp = r.logp[i:j]
        # e = s * pi' with (log pi - max log pi) / tau <= 0, so exp cannot overflow
        e = torch.add((-r.logp_max[i:j] / tau)[:, None], logp, alpha=1.0 / tau, out=buf[: j - i]).exp_()
        s = e.sum(1)
        pt_x[i:j] = e.gather(1, x[i:j]).view(-1) / s
        cross[i:j] = torch.sum(torch.mul(e, logp, out=scratch[: j - i]), -1) / s  # sum_a pi'(a) log pi(a)
        if r.need_grad:  # W pi - beta pi' = W pi - (beta / s) e
            total_w = beta + (1 - beta) * pt_x[i:j]
            r.p[i:j].mul_(total_w[:, None]).addcmul_(e, (-beta / s)[:, None])
    loss = -((1 - beta) * pt_x * r.logp_x + beta * cross)
    if not r.need_grad:
        return loss, None
    return loss, _sub_at_target(r.p, r.target, (1 - beta) * pt_x)


def unlikelihood(r: Rows, prm: UnlikelihoodParams) -> Result:
    """Token-level unlikelihood (Welleck et al. 2019) with sampled negatives.

    L = -log pi(x) - alpha sum_{c in C} log(1 - pi(c)),  C = the *distinct* drawn tokens != x
    (K draws from softmax(z / tau)); 1 - pi(c) is clamped at 1e-6 (zero gradient when clamped).
    dL/dz = pi - e_x + sum_{c in C} g_c (e_c - pi),  g_c = alpha pi(c) / (1 - pi(c)).
    """
    a = r.draws.sort(1).values
    first = torch.ones_like(a, dtype=torch.bool)
    first[:, 1:] = a[:, 1:] != a[:, :-1]  # count each distinct negative once
    negative = first & (a != r.target[:, None])
    p_c = r.p.gather(1, a)
    complement = 1 - p_c
    clamped = complement.clamp_min(UL_MIN_COMPLEMENT)
    loss = -r.logp_x - prm.alpha * (clamped.log() * negative).sum(1)
    if not r.need_grad:
        return loss, None
    g = torch.where(negative & (complement > UL_MIN_COMPLEMENT), prm.alpha * p_c / clamped, 0.0)
    grad = r.p.mul_(1 - g.sum(1, keepdim=True)).scatter_add_(1, a, g)
    return loss, _sub_at_target(grad, r.target, 1.0)


def label_smoothing(r: Rows, prm: LabelSmoothingParams) -> Result:
    """Cross-entropy against (1 - eps) e_x + eps / V (torch's ``label_smoothing``).

    L = -(1 - eps) log pi(x) - (eps / V) sum_v log pi(v).  dL/dz = pi - (1 - eps) e_x - eps / V.
    """
    eps, vocab = prm.eps, r.p.shape[1]
    loss = -(1 - eps) * r.logp_x - (eps / vocab) * r.logp.sum(1)
    if not r.need_grad:
        return loss, None
    return loss, _sub_at_target(r.p.sub_(eps / vocab), r.target, 1 - eps)


def entropy_sft(r: Rows, prm: EntropySFTParams) -> Result:
    """Entropy-regularised SFT. L = -log pi(x) - lambda H(pi)  (lambda > 0 rewards entropy).

    dH/dz = -pi (log pi + H), so dL/dz = pi (1 + lambda (log pi + H)) - e_x.
    """
    lam = prm.lam
    loss = -r.logp_x - lam * r.entropy
    if not r.need_grad:
        return loss, None
    factor = r.logp.mul_(lam).add_((1 + lam * r.entropy)[:, None])  # consumes logp
    return loss, _sub_at_target(r.p.mul_(factor), r.target, 1.0)


def asft(r: Rows, prm: ASFTParams) -> Result:
    """Anchored SFT (arXiv 2509.23753) as LLaMA-Factory implements it (``use_asft_loss``): DFT plus a KL
    anchor to the frozen reference model, ``F.kl_div(log_softmax(z), softmax(z_ref))``, i.e. the FORWARD
    KL from the reference, KL(pi_ref || pi) (mass-covering: pi is pulled up wherever pi_ref has mass).

    L = -sg(pi(x)) log pi(x) + alpha sum_v pi_ref(v) [log pi_ref(v) - log pi(v)],  pi_ref constant.
    dL/dz = pi(x) (pi - e_x) + alpha (pi - pi_ref)  (d/dz of -sum_v pi_ref(v) log pi(v) is pi - pi_ref,
    as sum_v pi_ref(v) = 1). alpha = 0 is DFT exactly; pi = pi_ref makes the KL term and its gradient 0.
    """
    w, alpha = r.p_x, prm.alpha
    loss = -w * r.logp_x + alpha * r.kl_ref
    if not r.need_grad:
        return loss, None
    q = r.ref_logp.exp_()  # consumes ref_logp: pi_ref
    grad = r.p.mul_((w + alpha)[:, None]).add_(q, alpha=-alpha)  # (w + alpha) pi - alpha pi_ref
    return loss, _sub_at_target(grad, r.target, w)


# ======================================================================================================
# Registry: params.SPECS (torch-free) + the formula of each objective
# ======================================================================================================
@dataclass(frozen=True)
class Objective:
    """One objective: its formula ``fn`` (the contract above) and what ``params.SPECS`` says of it."""

    name: str
    fn: Callable[[Rows, Any], Result]
    params: type[ObjectiveParams]
    sampled: bool = False  # draws K tokens per position (params.k, params.tau)
    summary: str = ""
    reference: bool = False  # needs the reference model's log-probs (rows.ref_logp, rows.kl_ref)


_FORMULAS: dict[str, Callable[[Rows, Any], Result]] = {
    "sft": sft,
    "otr": otr,
    "otr_exact": otr_exact,
    "dft": dft,
    "unlikelihood": unlikelihood,
    "label_smoothing": label_smoothing,
    "entropy_sft": entropy_sft,
    "asft": asft,
}
if set(_FORMULAS) != set(SPECS):  # a new objective needs both a Spec and a formula
    raise ImportError(f"params.SPECS and losses._FORMULAS disagree: {sorted(set(_FORMULAS) ^ set(SPECS))}")

OBJECTIVES: dict[str, Objective] = {
    name: Objective(
        name, _FORMULAS[name], s.params, sampled=s.sampled, summary=s.summary, reference=s.reference
    )
    for name, s in SPECS.items()
}


def get(name: str) -> Objective:
    """``OBJECTIVES[name]``, or the same ``ValueError`` as ``params.spec`` for an unknown name."""
    spec(name)
    return OBJECTIVES[name]


__all__ = [
    "OBJECTIVES",
    "UL_MIN_COMPLEMENT",
    "Objective",
    "Rows",
    "asft",
    "dft",
    "entropy_sft",
    "get",
    "kl_rows",
    "label_smoothing",
    "otr",
    "otr_exact",
    "sft",
    "unlikelihood",
]
