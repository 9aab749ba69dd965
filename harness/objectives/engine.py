"""Token-level training objectives: SFT, One-Token Rollout (OTR) and their neighbours.

Pure math: no I/O, no configs, no Trainer. The reference for every formula is
``/work/shared/reference/otr.md`` (cited below as §1, §2).

Contract
--------
``compute(name, logits, labels, *, generator=None, chunk_size=None, **params) -> ObjectiveOutput``

* ``logits``: ``[..., V]`` (usually ``[B, T, V]``), any float dtype (bf16 is fine). Softmax and
  log-softmax are computed in fp32 (fp64 if the logits are fp64), chunk by chunk.
* ``labels``: ``[...]`` integer, *aligned with the logits*: ``labels[b, t]`` is the target of
  ``logits[b, t]`` (the caller does the causal shift). ``-100`` marks an ignored position (prompt, padding).
* ``ObjectiveOutput.loss``: fp32 scalar (fp64 for fp64 logits), the **sum** of the per-token loss over the
  non-ignored positions. Normalisation (divide by the response tokens of the whole accumulated batch, §2
  last line) is the trainer's job, in one place.
* ``ObjectiveOutput.num_tokens``: number of non-ignored positions.
* ``ObjectiveOutput.metrics``: floats, each a **mean over the non-ignored positions of this call**
  (0.0 when ``num_tokens == 0``). Aggregate across micro-batches by weighting with ``num_tokens``
  (``merge_metrics`` does that). Names: ``token_acc`` (label attains the max logit), ``entropy`` (nats,
  of pi at temperature 1), ``p_gt`` (pi(x_t)), ``nll`` (-log pi(x_t), the SFT loss, comparable across
  objectives) and, for sampled objectives, ``draw_hit_rate`` (fraction of the K draws equal to x_t) and
  ``no_hit_frac`` (fraction of positions where no draw hit x_t).

``compute_from_hidden(name, hidden, weight, labels, *, bias=None, ...)`` gives the same result from the
final hidden states and the LM head, computing the logits tile by tile so ``[N, V]`` never exists.

How it is computed (why it is as cheap as SFT)
----------------------------------------------
Every objective here is a function of one row of logits z_t per position. For each chunk of non-ignored
positions the engine builds ``log pi`` and ``pi`` in two reusable ``[chunk, V]`` fp32 blocks and hands
them to the objective, which returns its per-position loss and its gradient **with respect to the logits**
in closed form (the formulas are in each docstring, and the tests check them against autograd). The
gradient is written straight into the logits' gradient buffer (or, from hidden states, multiplied into
the hidden/weight gradients), so nothing of size ``[chunk, V]`` is kept for the backward pass. OTR's K
draws are sampled by inverse CDF on the cumulative sum of softmax(z / tau), reusing the same block, so the
only K-sized tensors are ``[N, K]`` uniforms and ``[chunk, K]`` indices: memory does not grow with V * K.
No objective needs a third block.

Backward through the returned loss is supported once (``retain_graph`` double backward is not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

IGNORE_INDEX = -100
# Default bytes per [chunk, V] block. From logits: small (55 rows at V = 152k), because on CPU a block
# re-used from the malloc heap avoids page-faulting fresh memory (glibc keeps blocks <= 32 MiB), which
# costs more than the math. From hidden states: big enough for an efficient LM-head matmul per tile
# (~220 rows at V = 152k: the [V, H] weight is streamed once per tile), still small next to the weights.
DEFAULT_CHUNK_BYTES = 32 * 2**20
DEFAULT_TILE_BYTES = 128 * 2**20
# Unlikelihood: 1 - pi(c) is clamped here so log(1 - pi(c)) stays finite (Welleck et al. clamp at 1e-5).
_UL_MIN_COMPLEMENT = 1e-6
_ROWDOT_ELEMS = 2**20


# ======================================================================================================
# Parameters (validated by pydantic; the config layer calls ``validate_params`` before any training)
# ======================================================================================================
class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class NoParams(_Params):
    """sft and dft take no parameters."""


class OTRParams(_Params):
    """§1: K draws from softmax(z / tau) with replacement; reward 1 for x_t, beta otherwise."""

    k: int = Field(256, ge=1, validation_alias=AliasChoices("k", "K"), description="draws per position")
    tau: float = Field(1.2, gt=0, description="sampling temperature (log-probs stay at temperature 1)")
    beta: float = Field(-0.1, lt=1, description="reward of a wrong draw")


class OTRExactParams(_Params):
    """§2: the K -> infinity expectation of ``otr`` (no sampling)."""

    tau: float = Field(1.2, gt=0)
    beta: float = Field(-0.1, lt=1)


class UnlikelihoodParams(_Params):
    """Welleck et al. 2019, token level, with negatives drawn from the model (OTR's wrong draws)."""

    alpha: float = Field(1.0, ge=0, description="weight of the unlikelihood term")
    k: int = Field(16, ge=1, validation_alias=AliasChoices("k", "K"), description="draws per position")
    tau: float = Field(1.0, gt=0, description="temperature of the draws")


class LabelSmoothingParams(_Params):
    eps: float = Field(0.1, ge=0, lt=1)


class EntropySFTParams(_Params):
    """L = -log pi(x) - lambda * H(pi): lambda > 0 *rewards* entropy (keeps the policy spread out)."""

    lam: float = Field(0.01, ge=0, validation_alias=AliasChoices("lambda", "lam"), alias="lambda")


# ======================================================================================================
# The objectives. Each gets one chunk of non-ignored positions (``Rows``) and returns
# (loss per position [c], dL/dz [c, V] or None). Notation: pi = softmax(z), e_x = one-hot of the label.
# ======================================================================================================
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


def sft(r: Rows, prm: NoParams):
    """Cross-entropy. L = -log pi(x).  dL/dz = pi - e_x."""
    loss = -r.logp_x
    return loss, _sub_at_target(r.p, r.target, 1.0) if r.need_grad else None


def dft(r: Rows, prm: NoParams):
    """§2, DFT (arXiv 2508.05629). L = -sg(pi(x)) log pi(x).  dL/dz = pi(x) (pi - e_x)."""
    w = r.p_x  # a constant weight: no gradient flows through it
    loss = -w * r.logp_x
    if not r.need_grad:
        return loss, None
    return loss, _sub_at_target(r.p.mul_(w[:, None]), r.target, w)


def otr(r: Rows, prm: OTRParams):
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


def otr_exact(r: Rows, prm: OTRExactParams):
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


def unlikelihood(r: Rows, prm: UnlikelihoodParams):
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
    clamped = complement.clamp_min(_UL_MIN_COMPLEMENT)
    loss = -r.logp_x - prm.alpha * (clamped.log() * negative).sum(1)
    if not r.need_grad:
        return loss, None
    g = torch.where(negative & (complement > _UL_MIN_COMPLEMENT), prm.alpha * p_c / clamped, 0.0)
    grad = r.p.mul_(1 - g.sum(1, keepdim=True)).scatter_add_(1, a, g)
    return loss, _sub_at_target(grad, r.target, 1.0)


def label_smoothing(r: Rows, prm: LabelSmoothingParams):
    """Cross-entropy against (1 - eps) e_x + eps / V (torch's ``label_smoothing``).

    L = -(1 - eps) log pi(x) - (eps / V) sum_v log pi(v).  dL/dz = pi - (1 - eps) e_x - eps / V.
    """
    eps, vocab = prm.eps, r.p.shape[1]
    loss = -(1 - eps) * r.logp_x - (eps / vocab) * r.logp.sum(1)
    if not r.need_grad:
        return loss, None
    return loss, _sub_at_target(r.p.sub_(eps / vocab), r.target, 1 - eps)


def entropy_sft(r: Rows, prm: EntropySFTParams):
    """Entropy-regularised SFT. L = -log pi(x) - lambda H(pi)  (lambda > 0 rewards entropy).

    dH/dz = -pi (log pi + H), so dL/dz = pi (1 + lambda (log pi + H)) - e_x.
    """
    lam = prm.lam
    loss = -r.logp_x - lam * r.entropy
    if not r.need_grad:
        return loss, None
    factor = r.logp.mul_(lam).add_((1 + lam * r.entropy)[:, None])  # consumes logp
    return loss, _sub_at_target(r.p.mul_(factor), r.target, 1.0)


# ======================================================================================================
# Registry
# ======================================================================================================
@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[[Rows, Any], tuple[torch.Tensor, torch.Tensor | None]]
    params: type[_Params]
    sampled: bool = False  # draws K tokens per position (params.k, params.tau)
    summary: str = ""


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective("sft", sft, NoParams, summary="-log pi(x)"),
        Objective("otr", otr, OTRParams, sampled=True, summary="REINFORCE over K draws from pi^(1/tau)"),
        Objective("otr_exact", otr_exact, OTRExactParams, summary="closed-form expectation of otr"),
        Objective("dft", dft, NoParams, summary="-sg(pi(x)) log pi(x)"),
        Objective("unlikelihood", unlikelihood, UnlikelihoodParams, sampled=True, summary="CE + sampled UL"),
        Objective("label_smoothing", label_smoothing, LabelSmoothingParams, summary="CE vs smoothed target"),
        Objective("entropy_sft", entropy_sft, EntropySFTParams, summary="-log pi(x) - lambda H"),
    ]
}


def available() -> list[str]:
    """Names of all objectives, sorted."""
    return sorted(OBJECTIVES)


def _get(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(available())}")
    return OBJECTIVES[name]


def _field_names(model: type[_Params]) -> list[str]:
    return sorted(f.alias or n for n, f in model.model_fields.items())


def _describe(err: dict, fields: list[str]) -> str:
    loc = ".".join(str(x) for x in err["loc"]) or "params"
    kind, ctx = err["type"], err.get("ctx", {})
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}
    if kind == "extra_forbidden":
        return f"unknown parameter {loc!r}; valid: {', '.join(fields) or '(none)'}"
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{loc} must be {bounds[kind]} {limit} (got {err['input']!r})"
    msg = err["msg"]
    return f"{loc}: {msg[0].lower() + msg[1:]} (got {err['input']!r})"


def validate_params(name: str, params: dict[str, Any] | None = None) -> _Params:
    """Validate ``params`` for objective ``name``; return the frozen params model (defaults filled in).

    Raises ``ValueError`` with a one-line message naming the objective, the field, what was wrong and the
    valid choices, e.g. ``objective 'otr': k must be >= 1 (got 0)``.
    """
    obj = _get(name)
    if isinstance(params, obj.params):
        return params
    try:
        return obj.params.model_validate(dict(params or {}))
    except ValidationError as e:
        fields = _field_names(obj.params)
        msgs = "; ".join(_describe(err, fields) for err in e.errors())
        raise ValueError(f"objective {name!r}: {msgs}") from None


def is_sampled(name: str) -> bool:
    """True for objectives that draw tokens from the model (``otr``, ``unlikelihood``)."""
    return _get(name).sampled


def samples_per_token(name: str, params: dict[str, Any] | _Params | None = None) -> int:
    """Tokens sampled per response token (K for sampled objectives, 0 otherwise): compute accounting."""
    prm = validate_params(name, params)
    return int(prm.k) if _get(name).sampled else 0


# ======================================================================================================
# Output
# ======================================================================================================
METRICS = ("token_acc", "entropy", "p_gt", "nll")
SAMPLED_METRICS = ("draw_hit_rate", "no_hit_frac")


@dataclass
class ObjectiveOutput:
    """``loss``: scalar, SUM over non-ignored tokens (differentiable). ``num_tokens``: their count.
    ``metrics``: per-call MEANS over those tokens (0.0 if none); weight by ``num_tokens`` to aggregate.
    ``draws``: the ``[num_tokens, K]`` sampled token ids (only with ``return_draws=True``)."""

    loss: torch.Tensor
    num_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)
    draws: torch.Tensor | None = None


def merge_metrics(outputs: Iterable[ObjectiveOutput]) -> dict[str, float]:
    """Token-weighted mean of the metrics of several calls (e.g. the micro-batches of one step)."""
    outputs = list(outputs)
    total = sum(o.num_tokens for o in outputs)
    keys = {k for o in outputs for k in o.metrics}
    if total == 0:
        return dict.fromkeys(sorted(keys), 0.0)
    return {k: sum(o.metrics.get(k, 0.0) * o.num_tokens for o in outputs) / total for k in sorted(keys)}


# ======================================================================================================
# Engine: chunks of non-ignored positions, fp32 blocks, closed-form gradients
# ======================================================================================================
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _auto_chunk(n: int, vocab: int, dtype: torch.dtype, budget: int) -> int:
    elem = torch.finfo(dtype).bits // 8
    return max(1, min(n, budget // (vocab * elem)))


def _sample(z, zmax, tau, u, out) -> torch.Tensor:
    """Inverse-CDF draws from softmax(z / tau): ``u`` [c, K] uniforms -> [c, K] token ids.

    Exactly distributed as ``torch.multinomial(softmax(z / tau), K, replacement=True)`` (up to the
    dtype's rounding of the CDF); uses ``out`` [c, V] as scratch.
    """
    torch.add((-zmax / tau), z, alpha=1.0 / tau, out=out)  # (z - max z) / tau <= 0: no overflow
    cdf = out.exp_().cumsum_(-1)
    total = cdf[:, -1:]
    # u * total < total strictly, so the draw lands on a token with cdf[i] > cdf[i - 1], i.e. pi'(i) > 0
    target = torch.minimum(u.to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)


def _run(
    obj, prm, n, vocab, dtype, device, load_z, emit_grad, need_grad, chunk_size, generator, keep_draws, budget
):
    """Loop over chunks of the n non-ignored positions.

    ``load_z(lo, hi, out)`` writes the logits of positions lo..hi into ``out`` [hi-lo, V];
    ``emit_grad(lo, hi, g)`` consumes dL/dz for them (g is a scratch view: copy what you keep).
    Returns (loss sum, metric sums [6], draws or None).
    """
    c_max = chunk_size or _auto_chunk(n, vocab, dtype, budget)
    block_z = torch.empty(c_max, vocab, dtype=dtype, device=device)
    block_p = torch.empty(c_max, vocab, dtype=dtype, device=device)
    uniforms = None
    if obj.sampled:
        # All uniforms up front, one row per position: the draws do not depend on the chunking.
        gen_device = generator.device if generator is not None else device
        uniforms = torch.rand(n, prm.k, generator=generator, device=gen_device).to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    kept = []
    for lo in range(0, n, c_max):
        hi = min(n, lo + c_max)
        c = hi - lo
        z, p = block_z[:c], block_p[:c]
        target = load_z(lo, hi, z)
        zmax = z.amax(-1, keepdim=True)
        z_x = z.gather(1, target[:, None])
        correct = (z_x >= zmax).view(-1)  # label attains the max (argmax == label up to exact ties)
        draws = _sample(z, zmax, prm.tau, uniforms[lo:hi], p) if obj.sampled else None
        # log-sum-exp by hand so that exp(z - max) is computed once and becomes pi
        torch.sub(z, zmax, out=p).exp_()
        norm = p.sum(-1, keepdim=True)
        lse = zmax + norm.log()
        p.div_(norm)
        logp = z.sub_(lse)
        logp_x = (z_x - lse).view(-1)
        rows = Rows(
            logp=logp,
            p=p,
            target=target,
            logp_x=logp_x,
            p_x=logp_x.exp(),
            entropy=-_rowdot(p, logp),
            logp_max=(zmax - lse).view(-1),
            draws=draws,
            need_grad=need_grad,
        )
        m = torch.stack([correct.to(dtype), rows.entropy, rows.p_x, -logp_x]).sum(1)
        if draws is not None:
            hits = (draws == target[:, None]).sum(1).to(dtype)
            m = torch.cat([m, torch.stack([hits.sum() / prm.k, (hits == 0).sum().to(dtype)])])
            if keep_draws:
                kept.append(draws)
        sums[: m.numel()] += m
        loss, grad = obj.fn(rows, prm)
        loss_sum += loss.sum()
        if need_grad:
            emit_grad(lo, hi, grad)
    draws_out = torch.cat(kept) if kept else None
    if keep_draws and obj.sampled and draws_out is None:
        draws_out = torch.empty(0, prm.k, dtype=torch.long, device=device)
    return loss_sum, sums, draws_out


def _metrics(obj, sums: torch.Tensor, n: int) -> dict[str, float]:
    names = METRICS + (SAMPLED_METRICS if obj.sampled else ())
    vals = (sums / max(n, 1)).tolist()
    return {k: float(v) for k, v in zip(names, vals, strict=False)}


def _valid_positions(labels: torch.Tensor) -> torch.Tensor:
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().view(-1)


def _check_labels(targets: torch.Tensor, vocab: int):
    if targets.numel() and bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(f"labels must be in [0, {vocab}) or {IGNORE_INDEX}")


class _FusedLogits(torch.autograd.Function):
    """loss = sum_t L_t(logits[t]); dL/dlogits is computed in forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, logits, job):
        vocab = logits.shape[-1]
        labels_flat = job["labels"].reshape(-1)
        idx = _valid_positions(job["labels"]).to(logits.device)
        targets = labels_flat.to(logits.device).index_select(0, idx).long()
        _check_labels(targets, vocab)
        dtype = _compute_dtype(logits.dtype)
        flat = logits.reshape(-1, vocab) if logits.is_contiguous() else None
        grad = None
        if job["need_grad"]:
            grad = torch.empty_like(logits, memory_format=torch.contiguous_format).view(-1, vocab)
            ignored = (labels_flat == IGNORE_INDEX).to(logits.device)
            grad[ignored] = 0

        def load_z(lo, hi, out):
            sel = idx[lo:hi]
            if flat is not None and flat.dtype == dtype:
                torch.index_select(flat, 0, sel, out=out)
            elif flat is not None:
                out.copy_(flat.index_select(0, sel))
            else:  # non-contiguous logits (e.g. a slice): gather rows without copying the whole tensor
                out.copy_(logits[torch.unravel_index(sel, logits.shape[:-1])])
            return targets[lo:hi]

        def emit_grad(lo, hi, g):
            grad.index_copy_(0, idx[lo:hi], g.to(grad.dtype))

        loss, sums, draws = _run(
            job["obj"], job["prm"], idx.numel(), vocab, dtype, logits.device, load_z, emit_grad,
            job["need_grad"], job["chunk_size"], job["generator"], job["keep_draws"], DEFAULT_CHUNK_BYTES,
        )  # fmt: skip
        job.update(sums=sums, n=idx.numel(), draws=draws)
        ctx.grad = grad.view(logits.shape) if grad is not None else None
        return loss.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if ctx.grad is None:
            raise RuntimeError("objective backward called twice or without grad (retain_graph unsupported)")
        grad, ctx.grad = ctx.grad, None
        return _scale_(grad, grad_out), None


def _scale_(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """t *= s in place (our buffer, used once); skipped for the common s == 1 on CPU."""
    if s.device.type == "cpu" and float(s) == 1.0:
        return t
    return t.mul_(s.to(t.dtype))


class _FusedLinear(torch.autograd.Function):
    """loss = sum_t L_t(hidden[t] @ W.T + b); logits exist one [chunk, V] tile at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, job):
        vocab, width = weight.shape
        h_flat = hidden.reshape(-1, width)
        idx = _valid_positions(job["labels"]).to(hidden.device)
        targets = job["labels"].reshape(-1).to(hidden.device).index_select(0, idx).long()
        _check_labels(targets, vocab)
        dtype = _compute_dtype(weight.dtype)
        need_h, need_w, need_b = job["need"]
        need_grad = need_h or need_w or need_b
        grad_h = torch.zeros_like(h_flat) if need_h else None
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(vocab, width, dtype=acc_dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=acc_dtype, device=weight.device) if need_b else None
        cache = {}

        def load_z(lo, hi, out):
            h = h_flat.index_select(0, idx[lo:hi]).to(weight.dtype)
            cache["h"] = h
            if weight.dtype == dtype:
                if bias is None:
                    torch.mm(h, weight.t(), out=out)
                else:
                    torch.addmm(bias, h, weight.t(), out=out)
            else:
                out.copy_(torch.nn.functional.linear(h, weight, bias))
            return targets[lo:hi]

        def emit_grad(lo, hi, g):
            h = cache.pop("h")
            g = g if g.dtype == weight.dtype else g.to(weight.dtype)
            if need_h:
                grad_h.index_copy_(0, idx[lo:hi], (g @ weight).to(grad_h.dtype))
            if need_w:
                if grad_w.dtype == g.dtype:
                    grad_w.addmm_(g.t(), h)
                else:
                    grad_w.add_(g.t() @ h)
            if need_b:
                grad_b.add_(g.sum(0))

        loss, sums, draws = _run(
            job["obj"], job["prm"], idx.numel(), vocab, dtype, hidden.device, load_z, emit_grad,
            need_grad, job["chunk_size"], job["generator"], job["keep_draws"], DEFAULT_TILE_BYTES,
        )  # fmt: skip
        job.update(sums=sums, n=idx.numel(), draws=draws)
        ctx.grads = [
            grad_h.view(hidden.shape) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
        ]
        return loss.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("objective backward called twice (retain_graph unsupported)")
        grads, ctx.grads = ctx.grads, None
        return *(None if g is None else _scale_(g, grad_out) for g in grads), None


def _job(name, labels, generator, chunk_size, keep_draws, params):
    obj = _get(name)
    prm = validate_params(name, params)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None (got {chunk_size})")
    return dict(
        obj=obj, prm=prm, labels=labels, generator=generator, chunk_size=chunk_size, keep_draws=keep_draws
    )


def _output(job) -> ObjectiveOutput:
    return ObjectiveOutput(
        loss=job["loss"], num_tokens=int(job["n"]), metrics=_metrics(job["obj"], job["sums"], job["n"]),
        draws=job["draws"],
    )  # fmt: skip


def compute(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    return_draws: bool = False,
    **params: Any,
) -> ObjectiveOutput:
    """Objective ``name`` on ``logits`` [..., V] and aligned ``labels`` [...] (-100 = ignored).

    ``params`` are validated (``validate_params``). ``generator`` drives the draws of sampled objectives
    (the global RNG if None); the same generator state gives the same draws and losses, independently of
    ``chunk_size`` (positions per fp32 block; default: ~32 MiB per block). The returned ``loss`` is the
    SUM over non-ignored positions and backpropagates into ``logits`` (once).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align")
    job = _job(name, labels, generator, chunk_size, return_draws, params)
    job["need_grad"] = torch.is_grad_enabled() and logits.requires_grad
    job["loss"] = _FusedLogits.apply(logits, job)
    return _output(job)


def compute_from_hidden(
    name: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    return_draws: bool = False,
    **params: Any,
) -> ObjectiveOutput:
    """Same as ``compute(name, hidden @ weight.T + bias, labels, ...)`` without materialising the logits.

    ``hidden`` [..., H] are the final hidden states (after the last norm), ``weight`` [V, H] (and ``bias``
    [V]) the LM head; ``labels`` [...] aligned with ``hidden``. Only non-ignored positions go through the
    head, ``chunk_size`` rows at a time (default: ~128 MiB per fp32 [chunk, V] tile). Gradients flow to ``hidden``, ``weight`` and ``bias``. The head
    must be a plain linear map (no logit soft-capping or scaling; use ``compute`` for such models).
    """
    if hidden.shape[:-1] != labels.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and labels {tuple(labels.shape)} "
            "do not align"
        )
    job = _job(name, labels, generator, chunk_size, return_draws, params)
    grad_on = torch.is_grad_enabled()
    job["need"] = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    job["loss"] = _FusedLinear.apply(hidden, weight, bias, job)
    return _output(job)


__all__ = [
    "IGNORE_INDEX",
    "METRICS",
    "OBJECTIVES",
    "SAMPLED_METRICS",
    "Objective",
    "ObjectiveOutput",
    "Rows",
    "available",
    "compute",
    "compute_from_hidden",
    "is_sampled",
    "merge_metrics",
    "samples_per_token",
    "validate_params",
]
