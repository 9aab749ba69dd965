"""The machinery: evaluates the formulas of ``losses.py`` chunk by chunk, with closed-form gradients.

Pure math: no I/O, no configs, no Trainer. The formulas, their contract and their citations of
``/work/shared/reference/otr.md`` are in ``losses.py``; parameters and names in ``params.py``.

Contract
--------
``compute(name, logits, labels, *, generator=None, chunk_size=None, return_draws=False, **params)``
``-> ObjectiveOutput``

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
* Sampled objectives: ``torch.rand(N, K, generator=generator)`` is drawn once, up front, one row per
  non-ignored position in row-major order (on the generator's device), and row t's K draws are the
  inverse-CDF images of its uniforms under softmax(z_t / tau). So the draws depend on the generator
  state only, never on ``chunk_size``; ``reference.compute`` follows the same protocol.

``compute_from_hidden(name, hidden, weight, labels, *, bias=None, softcap=None, ...)`` gives the same result
from the final hidden states and the LM head (optionally soft-capped, as Gemma 2/3), computing the logits
tile by tile so ``[N, V]`` never exists.

How it is computed (why it is as cheap as SFT)
----------------------------------------------
Every objective is a function of one row of logits z_t per position. For each chunk of non-ignored
positions the engine builds ``log pi`` and ``pi`` in two reusable ``[chunk, V]`` fp32 blocks and hands
them to the objective (``losses.Rows``), which returns its per-position loss and its gradient **with
respect to the logits** in closed form. The gradient is written straight into the logits' gradient buffer
(or, from hidden states, multiplied into the hidden/weight gradients), so nothing of size ``[chunk, V]``
is kept for the backward pass. OTR's K draws are sampled by inverse CDF on the cumulative sum of
softmax(z / tau), reusing the same block, so the only K-sized tensors are ``[N, K]`` uniforms and
``[chunk, K]`` indices: memory does not grow with V * K. No objective needs a third block.

Backward through the returned loss is supported once (``retain_graph`` double backward is not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.objectives.losses import Objective, Rows, _rowdot, get
from harness.objectives.params import (
    IGNORE_INDEX,
    METRICS,
    SAMPLED_METRICS,
    ObjectiveParams,
    validate_params,
)

# Default bytes per [chunk, V] block. From logits: small (55 rows at V = 152k), because on CPU a block
# re-used from the malloc heap avoids page-faulting fresh memory (glibc keeps blocks <= 32 MiB), which
# costs more than the math. From hidden states: big enough for an efficient LM-head matmul per tile
# (~220 rows at V = 152k: the [V, H] weight is streamed once per tile), still small next to the weights.
DEFAULT_CHUNK_BYTES = 32 * 2**20
DEFAULT_TILE_BYTES = 128 * 2**20


# ======================================================================================================
# Output
# ======================================================================================================
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


def _run(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
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


def _metrics(obj: Objective, sums: torch.Tensor, n: int) -> dict[str, float]:
    names = METRICS + (SAMPLED_METRICS if obj.sampled else ())
    vals = (sums / max(n, 1)).tolist()
    return {k: float(v) for k, v in zip(names, vals, strict=False)}


def _valid_positions(labels: torch.Tensor) -> torch.Tensor:
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().view(-1)


def _check_labels(targets: torch.Tensor, vocab: int) -> None:
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
    """loss = sum_t L_t(z_t), z_t = hidden[t] @ W.T + b (soft-capped: c * tanh(that / c)); logits exist one
    [chunk, V] tile at a time (a cap keeps its tanh tile for the chain rule: a third block)."""

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
        cap = job["softcap"]
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
            if cap is not None:  # z = cap * tanh(raw / cap); tanh kept for the backward (chunk 1: largest)
                if need_grad and "t" not in cache:
                    cache["t"] = torch.empty_like(out)
                t = cache["t"][: hi - lo] if need_grad else out
                torch.mul(torch.div(out, cap, out=t).tanh_(), cap, out=out)
            return targets[lo:hi]

        def emit_grad(lo, hi, g):
            h = cache.pop("h")
            if cap is not None:  # chain rule through the cap: dL/d(raw) = dL/dz * (1 - tanh^2)
                t = cache["t"][: hi - lo]
                g.mul_(t.mul_(t).neg_().add_(1.0))
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
            need_grad, job["chunk_size"], job["generator"], job["keep_draws"],
            DEFAULT_TILE_BYTES if cap is None or not need_grad else DEFAULT_TILE_BYTES * 2 // 3,
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


def _job(
    name: str,
    labels: torch.Tensor,
    generator: torch.Generator | None,
    chunk_size: int | None,
    keep_draws: bool,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The state one call shares with its autograd Function (which fills in sums, n and draws)."""
    obj = get(name)
    prm = validate_params(name, params)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None (got {chunk_size})")
    return dict(
        obj=obj, prm=prm, labels=labels, generator=generator, chunk_size=chunk_size, keep_draws=keep_draws
    )


def _output(job: dict[str, Any]) -> ObjectiveOutput:
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
    softcap: float | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    return_draws: bool = False,
    **params: Any,
) -> ObjectiveOutput:
    """Same as ``compute(name, hidden @ weight.T + bias, labels, ...)`` without materialising the logits.

    ``hidden`` [..., H] are the final hidden states (after the last norm), ``weight`` [V, H] (and ``bias``
    [V]) the LM head; ``labels`` [...] aligned with ``hidden``. Only non-ignored positions go through the
    head, ``chunk_size`` rows at a time (default: ~128 MiB per fp32 [chunk, V] tile). Gradients flow to
    ``hidden``, ``weight`` and ``bias``. ``softcap`` c > 0 (Gemma 2/3's ``final_logit_softcapping``) makes
    the logits ``c * tanh((hidden @ weight.T + bias) / c)`` as those models do (the default tile shrinks
    so that its third block, tanh's, costs no memory). Other logit post-processing (scaling) is not
    supported: use ``compute`` on the model's logits.
    """
    if hidden.shape[:-1] != labels.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and labels {tuple(labels.shape)} "
            "do not align"
        )
    if softcap is not None and not (isinstance(softcap, (int, float)) and 0 < softcap < float("inf")):
        raise ValueError(f"softcap must be a finite number > 0 or None (got {softcap!r})")
    job = _job(name, labels, generator, chunk_size, return_draws, params)
    job["softcap"] = None if softcap is None else float(softcap)
    grad_on = torch.is_grad_enabled()
    job["need"] = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    job["loss"] = _FusedLinear.apply(hidden, weight, bias, job)
    return _output(job)


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_TILE_BYTES",
    "IGNORE_INDEX",
    "METRICS",
    "SAMPLED_METRICS",
    "ObjectiveOutput",
    "compute",
    "compute_from_hidden",
    "merge_metrics",
]
