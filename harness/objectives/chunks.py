"""The chunk loop of the engine: fp32 blocks, softmax, draws, the reference's log-probs, metric sums.

``run_chunks`` walks the n non-ignored positions of one call in chunks of c rows. For each chunk it asks
its caller for the logits (``load_z``: a copy out of ``[N, V]`` logits, or one LM-head tile from hidden
states), builds ``log pi`` and ``pi`` in two reusable ``[c, V]`` blocks, hands them to the objective
(``losses.Rows``) and passes the objective's ``dL/dz`` to ``emit_grad``. ``engine.py`` wraps it in the
two autograd Functions; this module knows nothing of autograd, hidden states or LM heads.

Reference objectives (``asft``): ``load_ref`` writes the frozen reference model's logits of the same
positions into a third block (the same tile on the fused path: the reference's hidden states through its
head, never a ``[B, T, V]`` tensor), which becomes ``log pi_ref`` in place; the engine then computes
KL(pi_ref || pi) per row (``rows.kl_ref``, also the ``kl_ref`` diagnostic). The default chunk shrinks so
that three blocks cost what two did.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.objectives.losses import Objective, Rows, _rowdot, kl_rows
from harness.objectives.params import METRICS, REFERENCE_METRICS, SAMPLED_METRICS, ObjectiveParams

# Slots of the metric sums: METRICS, then SAMPLED_METRICS, then REFERENCE_METRICS.
_SAMPLED_AT = len(METRICS)
_REFERENCE_AT = _SAMPLED_AT + len(SAMPLED_METRICS)
_SLOTS = _REFERENCE_AT + len(REFERENCE_METRICS)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else (bf16, fp16, fp32) is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _auto_chunk(n: int, vocab: int, dtype: torch.dtype, budget: int) -> int:
    elem = torch.finfo(dtype).bits // 8
    return max(1, min(n, budget // (vocab * elem)))


def _sample(
    z: torch.Tensor, zmax: torch.Tensor, tau: float, u: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
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


def _log_softmax_(z: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``z`` [c, V] -> log softmax(z) in place, with ``scratch`` [c, V] for exp(z - max) (no temporary)."""
    zmax = z.amax(-1, keepdim=True)
    norm = torch.sub(z, zmax, out=scratch).exp_().sum(-1, keepdim=True)
    return z.sub_(zmax + norm.log())


def run_chunks(
    obj: Objective,
    prm: ObjectiveParams,
    n: int,
    vocab: int,
    dtype: torch.dtype,
    device: torch.device,
    load_z: Callable[[int, int, torch.Tensor], torch.Tensor],
    emit_grad: Callable[[int, int, torch.Tensor], None],
    need_grad: bool,
    chunk_size: int | None,
    generator: torch.Generator | None,
    keep_draws: bool,
    budget: int,
    load_ref: Callable[[int, int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loop over chunks of the n non-ignored positions.

    ``load_z(lo, hi, out)`` writes the logits of positions lo..hi into ``out`` [hi-lo, V] and returns
    their targets; ``load_ref(lo, hi, out)`` (reference objectives) the reference model's logits of the
    same positions; ``emit_grad(lo, hi, g)`` consumes dL/dz for them (g is a scratch view: copy what you
    keep). ``budget``: bytes per block when there are two (a third, the reference's, shrinks them).
    Returns (loss sum, metric sums [7] in the slots of ``metrics``, draws or None).
    """
    blocks = 3 if load_ref is not None else 2
    c_max = chunk_size or _auto_chunk(n, vocab, dtype, budget * 2 // blocks)
    block_z = torch.empty(c_max, vocab, dtype=dtype, device=device)
    block_p = torch.empty(c_max, vocab, dtype=dtype, device=device)
    block_r = torch.empty(c_max, vocab, dtype=dtype, device=device) if load_ref is not None else None
    uniforms = None
    if obj.sampled:
        # All uniforms up front, one row per position: the draws do not depend on the chunking.
        gen_device = generator.device if generator is not None else device
        uniforms = torch.rand(n, prm.k, generator=generator, device=gen_device).to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    sums = torch.zeros(_SLOTS, dtype=torch.float64, device=device)
    kept = []
    for lo in range(0, n, c_max):
        hi = min(n, lo + c_max)
        c = hi - lo
        z, p = block_z[:c], block_p[:c]
        ref_logp = None
        if block_r is not None:  # first, while p is free to serve as scratch
            load_ref(lo, hi, block_r[:c])
            ref_logp = _log_softmax_(block_r[:c], p)
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
            ref_logp=ref_logp,
            kl_ref=kl_rows(ref_logp, logp) if ref_logp is not None else None,
        )
        sums[:_SAMPLED_AT] += torch.stack([correct.to(dtype), rows.entropy, rows.p_x, -logp_x]).sum(1)
        if draws is not None:
            hits = (draws == target[:, None]).sum(1).to(dtype)
            sums[_SAMPLED_AT:_REFERENCE_AT] += torch.stack([hits.sum() / prm.k, (hits == 0).sum().to(dtype)])
            if keep_draws:
                kept.append(draws)
        if rows.kl_ref is not None:
            sums[_REFERENCE_AT] += rows.kl_ref.sum()
        loss, grad = obj.fn(rows, prm)
        loss_sum += loss.sum()
        if need_grad:
            emit_grad(lo, hi, grad)
    draws_out = torch.cat(kept) if kept else None
    if keep_draws and obj.sampled and draws_out is None:
        draws_out = torch.empty(0, prm.k, dtype=torch.long, device=device)
    return loss_sum, sums, draws_out


def metrics(obj: Objective, sums: torch.Tensor, n: int) -> dict[str, float]:
    """The per-token MEANS of ``run_chunks``' sums: ``METRICS``, + ``SAMPLED_METRICS`` for sampled
    objectives, + ``REFERENCE_METRICS`` for reference objectives (0.0 each when n == 0)."""
    vals = (sums / max(n, 1)).tolist()
    names = list(zip(METRICS, vals, strict=False))
    if obj.sampled:
        names += zip(SAMPLED_METRICS, vals[_SAMPLED_AT:], strict=False)
    if obj.reference:
        names += zip(REFERENCE_METRICS, vals[_REFERENCE_AT:], strict=False)
    return {k: float(v) for k, v in names}


__all__ = ["compute_dtype", "metrics", "run_chunks"]
