"""The machinery: evaluates the formulas of ``losses.py`` chunk by chunk, with closed-form gradients.

Pure math: no I/O, no configs, no Trainer. The formulas, their contract and their citations of
``/work/shared/reference/otr.md`` are in ``losses.py``; parameters and names in ``params.py``.

Contract
--------
``compute(name, logits, labels, *, ref_logits=None, generator=None, chunk_size=None, return_draws=False,``
``**params) -> ObjectiveOutput``

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
  ``no_hit_frac`` (fraction of positions where no draw hit x_t), and, for reference objectives,
  ``kl_ref`` (KL(pi_ref || pi) in nats, the anchor's divergence from the frozen reference model).
* Reference objectives (``params.needs_reference``: ``asft``) need the frozen reference model's logits
  at the same positions, ``ref_logits`` (or ``ref_hidden`` + ``ref_weight`` below); constants, no gradient.
  A missing reference, or one given to an objective that takes none, is a one-line ``ValueError``.
* Sampled objectives: ``torch.rand(N, K, generator=generator)`` is drawn once, up front, one row per
  non-ignored position in row-major order (on the generator's device), and row t's K draws are the
  inverse-CDF images of its uniforms under softmax(z_t / tau). So the draws depend on the generator
  state only, never on ``chunk_size``; ``reference.compute`` follows the same protocol.

``compute_from_hidden(name, hidden, weight, labels, *, bias=None, softcap=None, ref_hidden=None,``
``ref_weight=None, ref_bias=None, ref_softcap=None, ...)`` gives the same result from the final hidden
states and the LM head (optionally soft-capped, as Gemma 2/3), computing the logits tile by tile so
``[N, V]`` never exists; a reference objective's reference logits come from the reference's final hidden
states through its head in the same tiles.

How it is computed (why it is as cheap as SFT)
----------------------------------------------
Every objective is a function of one row of logits z_t per position. For each chunk of non-ignored
positions the engine builds ``log pi`` and ``pi`` in two reusable ``[chunk, V]`` fp32 blocks and hands
them to the objective (``losses.Rows``), which returns its per-position loss and its gradient **with
respect to the logits** in closed form. The gradient is written straight into the logits' gradient buffer
(or, from hidden states, multiplied into the hidden/weight gradients), so nothing of size ``[chunk, V]``
is kept for the backward pass. OTR's K draws are sampled by inverse CDF on the cumulative sum of
softmax(z / tau), reusing the same block, so the only K-sized tensors are ``[N, K]`` uniforms and
``[chunk, K]`` indices: memory does not grow with V * K. Only reference objectives need a third block
(``log pi_ref``), and the default chunk shrinks so that the three cost what two do. The chunk loop itself
is in ``chunks.py``; this module holds the autograd Functions around it and the public API.

Backward through the returned loss is supported once (``retain_graph`` double backward is not).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.objectives.chunks import compute_dtype, metrics, run_chunks
from harness.objectives.losses import get
from harness.objectives.params import (
    IGNORE_INDEX,
    METRICS,
    SAMPLED_METRICS,
    available,
    needs_reference,
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
# Engine: chunks of non-ignored positions (chunks.py), fp32 blocks, closed-form gradients
# ======================================================================================================
def _valid_positions(labels: torch.Tensor) -> torch.Tensor:
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().view(-1)


def _check_labels(targets: torch.Tensor, vocab: int) -> None:
    if targets.numel() and bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(f"labels must be in [0, {vocab}) or {IGNORE_INDEX}")


def _gather_rows(logits: torch.Tensor, sel: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` [c, V] = the rows ``sel`` of ``logits`` [..., V] (flat row-major indices), in out's dtype,
    without copying the whole tensor when it is not contiguous (e.g. a slice after a causal shift)."""
    vocab = logits.shape[-1]
    if logits.is_contiguous() and logits.dtype == out.dtype:
        torch.index_select(logits.view(-1, vocab), 0, sel, out=out)
    elif logits.is_contiguous():
        out.copy_(logits.view(-1, vocab).index_select(0, sel))
    else:
        out.copy_(logits[torch.unravel_index(sel, logits.shape[:-1])])


def _linear_into(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out`` [c, V] = h @ weight.T + bias, straight into ``out`` when the dtypes allow it."""
    if weight.dtype != out.dtype:
        out.copy_(torch.nn.functional.linear(h, weight, bias))
    elif bias is None:
        torch.mm(h, weight.t(), out=out)
    else:
        torch.addmm(bias, h, weight.t(), out=out)


class _FusedLogits(torch.autograd.Function):
    """loss = sum_t L_t(logits[t]); dL/dlogits is computed in forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, logits, job):
        vocab = logits.shape[-1]
        labels_flat = job["labels"].reshape(-1)
        idx = _valid_positions(job["labels"]).to(logits.device)
        targets = labels_flat.to(logits.device).index_select(0, idx).long()
        _check_labels(targets, vocab)
        dtype = compute_dtype(logits.dtype)
        grad = None
        if job["need_grad"]:
            grad = torch.empty_like(logits, memory_format=torch.contiguous_format).view(-1, vocab)
            ignored = (labels_flat == IGNORE_INDEX).to(logits.device)
            grad[ignored] = 0

        def load_z(lo, hi, out):
            _gather_rows(logits, idx[lo:hi], out)
            return targets[lo:hi]

        def emit_grad(lo, hi, g):
            grad.index_copy_(0, idx[lo:hi], g.to(grad.dtype))

        ref = job["ref_logits"]
        load_ref = None if ref is None else lambda lo, hi, out: _gather_rows(ref, idx[lo:hi], out)
        loss, sums, draws = run_chunks(
            job["obj"], job["prm"], idx.numel(), vocab, dtype, logits.device, load_z, emit_grad,
            job["need_grad"], job["chunk_size"], job["generator"], job["keep_draws"], DEFAULT_CHUNK_BYTES,
            load_ref,
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
    [chunk, V] tile at a time (a cap keeps its tanh tile for the chain rule: a third block). A reference
    objective's reference logits are built the same way, in the same tiles, from ``job["ref"]``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, job):
        vocab, width = weight.shape
        h_flat = hidden.reshape(-1, width)
        idx = _valid_positions(job["labels"]).to(hidden.device)
        targets = job["labels"].reshape(-1).to(hidden.device).index_select(0, idx).long()
        _check_labels(targets, vocab)
        dtype = compute_dtype(weight.dtype)
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
            _linear_into(h, weight, bias, out)
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

        load_ref = None
        if job["ref"] is not None:  # the reference's tile: no gradient, so its cap is applied in place
            ref_h, ref_w, ref_b, ref_cap = job["ref"]
            ref_flat = ref_h.reshape(-1, ref_h.shape[-1])

            def load_ref(lo, hi, out):
                _linear_into(ref_flat.index_select(0, idx[lo:hi]).to(ref_w.dtype), ref_w, ref_b, out)
                if ref_cap is not None:
                    out.div_(ref_cap).tanh_().mul_(ref_cap)

        blocks = 3 if cap is not None and need_grad else 2  # the policy's blocks: tanh's is the third
        loss, sums, draws = run_chunks(
            job["obj"], job["prm"], idx.numel(), vocab, dtype, hidden.device, load_z, emit_grad,
            need_grad, job["chunk_size"], job["generator"], job["keep_draws"], DEFAULT_TILE_BYTES * 2 // blocks,
            load_ref,
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


def check_reference(name: str, given: bool, how: str) -> None:
    """One-line ``ValueError`` unless the reference side is ``given`` exactly when objective ``name``
    needs it (``params.needs_reference``); ``how`` names the arguments that carry it."""
    if needs_reference(name) and not given:
        raise ValueError(f"objective {name!r} needs the frozen reference model's logits: pass {how}")
    if given and not needs_reference(name):
        valid = ", ".join(n for n in available() if needs_reference(n))
        raise ValueError(f"objective {name!r} takes no reference model ({how}); objectives that do: {valid}")


def check_softcap(softcap: Any, field: str = "softcap") -> None:
    """``ValueError`` unless ``softcap`` is None or a finite number > 0."""
    if softcap is not None and not (isinstance(softcap, (int, float)) and 0 < softcap < float("inf")):
        raise ValueError(f"{field} must be a finite number > 0 or None (got {softcap!r})")


def check_ref_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_hidden: torch.Tensor | None,
    ref_weight: torch.Tensor | None,
) -> None:
    """The reference's hidden states and head must match the policy's: same positions and vocabulary."""
    if (ref_hidden is None) != (ref_weight is None):
        raise ValueError("ref_hidden and ref_weight go together: pass both (the reference's LM head weight)")
    if ref_hidden is not None and (
        ref_hidden.shape[:-1] != hidden.shape[:-1]
        or ref_hidden.shape[-1] != ref_weight.shape[1]
        or ref_weight.shape[0] != weight.shape[0]
    ):
        raise ValueError(
            f"ref_hidden {tuple(ref_hidden.shape)} and ref_weight {tuple(ref_weight.shape)} do not align with "
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} (same positions, same vocabulary)"
        )


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
        loss=job["loss"], num_tokens=int(job["n"]), metrics=metrics(job["obj"], job["sums"], job["n"]),
        draws=job["draws"],
    )  # fmt: skip


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
    """Objective ``name`` on ``logits`` [..., V] and aligned ``labels`` [...] (-100 = ignored).

    ``params`` are validated (``validate_params``). ``generator`` drives the draws of sampled objectives
    (the global RNG if None); the same generator state gives the same draws and losses, independently of
    ``chunk_size`` (positions per fp32 block; default: ~32 MiB per block). ``ref_logits`` [..., V]: the
    frozen reference model's logits at the same positions, required by (and only by) reference objectives
    (``asft``); no gradient flows into them. The returned ``loss`` is the SUM over non-ignored positions
    and backpropagates into ``logits`` (once).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align")
    check_reference(name, ref_logits is not None, "ref_logits=")
    if ref_logits is not None and ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits {tuple(ref_logits.shape)} and logits {tuple(logits.shape)} differ")
    job = _job(name, labels, generator, chunk_size, return_draws, params)
    job["ref_logits"] = None if ref_logits is None else ref_logits.detach()
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
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    ref_softcap: float | None = None,
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

    Reference objectives (``asft``) need the frozen reference model's side: ``ref_hidden`` [..., H'] its
    final hidden states at the same positions, ``ref_weight`` [V, H'] (+ ``ref_bias``, ``ref_softcap``)
    its LM head. Its logits are built tile by tile in the same tiles as the policy's (one more
    ``[chunk, V]`` block, the default tile shrinking to match), never as ``[..., V]``; no gradient flows
    into the reference side.
    """
    if hidden.shape[:-1] != labels.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and labels {tuple(labels.shape)} "
            "do not align"
        )
    check_softcap(softcap)
    check_softcap(ref_softcap, "ref_softcap")
    check_reference(name, ref_hidden is not None or ref_weight is not None, "ref_hidden= and ref_weight=")
    check_ref_hidden(hidden, weight, ref_hidden, ref_weight)
    job = _job(name, labels, generator, chunk_size, return_draws, params)
    job["softcap"] = None if softcap is None else float(softcap)
    job["ref"] = None
    if ref_hidden is not None:
        ref_bias = None if ref_bias is None else ref_bias.detach()
        cap = None if ref_softcap is None else float(ref_softcap)
        job["ref"] = (ref_hidden.detach(), ref_weight.detach(), ref_bias, cap)
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
    "check_reference",
    "compute",
    "compute_from_hidden",
    "merge_metrics",
]
