"""Objectives fused into the LM head, through the model's own forward (``training_path: fused``).

A Hugging Face causal LM computes its logits as ``lm_head(final hidden states)``, then maybe soft-caps
them. Here the same forward runs, but the LM head, when asked, computes a token-level objective from its
input (the final hidden states ``[B, T, H]``) and its own weight and bias, tile by tile
(``objectives.compute_from_hidden``): ``[B, T, V]`` logits never exist, nor does their gradient.

How (TRL's ``add_fused_lm_head`` and Liger-Kernel's ``lce_forward`` patch the causal-LM forward for the
same reason): ``enable_fused_objective(model)`` patches two *instance* ``forward`` methods, nothing of the
classes.

* The causal LM's ``forward`` takes one more keyword, ``fused_objective=FusedObjective(...)``. Without it
  the call is the original forward, unchanged. With it, the original forward runs (decoder, hooks,
  ``position_ids`` of packed rows, everything), while the request waits on the head; the call returns the
  objective's ``ObjectiveOutput`` (or one per row, ``per_sequence=True``) instead of the model output.
* The LM head's ``forward`` (a plain ``nn.Linear``) serves a waiting request from inside its own call, so
  every module hook runs as for any forward, and returns an empty ``[B, T, 0]`` tensor to the rest of the
  model's forward (whose soft-cap, if any, was applied to the tiles already).

Whatever wraps the model (DDP, FSDP, DeepSpeed, accelerate's autocast / fp32-output wrapper, PEFT's
``PeftModel``) is called as usual: ``wrapped(**batch, fused_objective=spec)``; the keyword reaches the
patched forward through the wrappers' ``**kwargs``. Enable it on the bare model before wrapping.

What is handled exactly: tied embeddings (the head's weight is the embedding: its gradient accumulates
from both uses), an LM-head bias, Gemma 2/3's ``final_logit_softcapping``, LoRA / PEFT adapters anywhere
but the head, packing. What is refused, with one line naming the model type and the way out: a head that
is not a plain ``torch.nn.Linear`` (LoRA or ``modules_to_save`` on ``lm_head``, quantized heads, ...),
logit scaling (``logit_scale``, ``logits_scaling``, ``output_multiplier``, ``lm_head_multiplier``), a
logit slice (``unpadded_vocab_size``), and -- found by a probe forward on two tokens at enable time --
any forward whose logits are not the head's output (soft-capped as configured), or that never calls it.

Labels: ``FusedObjective.labels`` ``[B, T]`` are aligned with the hidden states (``labels[b, t]`` is the
target of position t; -100 = ignored), i.e. already shifted; ``fused_loss`` shifts HF-style labels.

Reference objectives (``asft``: DFT + a KL anchor to the frozen base model) need the reference model's
logits too. ``reference_head(ref_model, inputs)`` runs the reference's own forward with a *capture*
request waiting on its head: the head hands back its input (the reference's final hidden states
``[B, T, H]``) and its weight, bias and soft-cap (``ReferenceHead``) instead of computing logits, so the
reference's ``[B, T, V]`` logits never exist either. ``FusedObjective(reference=...)`` passes it to
``objectives.compute_from_hidden``, which builds the reference's logits in the same tiles as the policy's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MethodType
from typing import Any

import torch
from torch import nn

from harness import objectives
from harness.training.fusable import (
    FusedHeadError,
    causal_lm,
    check_fusable,
    refuse,
)

IGNORE_INDEX = objectives.IGNORE_INDEX


@dataclass
class ReferenceHead:
    """The frozen reference model's side of a reference objective on the fused path: its final hidden
    states ``hidden`` ``[B, T, H]`` (detached) at the policy's positions and its LM head (``weight``
    ``[V, H]``, ``bias``, ``softcap``); ``objectives.compute_from_hidden`` turns them into logits tile
    by tile."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None


@dataclass
class HeadCapture:
    """A request that asks the LM head for its input instead of an objective: the served result is the
    ``ReferenceHead`` of this forward (``reference_head`` sends it)."""

    def compute(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
    ) -> ReferenceHead:
        bias = None if bias is None else bias.detach()
        return ReferenceHead(hidden.detach(), weight.detach(), bias, softcap)


@dataclass
class FusedObjective:
    """A request for objective ``name`` from the LM head, passed as ``model(..., fused_objective=...)``.

    ``labels`` ``[B, T]`` int, aligned with the hidden states (shifted; -100 = ignored). ``params``: the
    objective's parameters (``objectives.validate_params``). ``generator`` drives sampled objectives'
    draws exactly as in ``objectives.compute``. ``per_sequence``: one ``ObjectiveOutput`` per row (in row
    order, sharing ``generator``) instead of one for the batch. ``implementation``: ``engine`` (tiles) or
    ``reference`` (materialises the logits; for tests). ``reference``: the frozen reference model's final
    hidden states and head (``reference_head``), for (and only for) reference objectives (``asft``).
    """

    name: str
    labels: torch.Tensor
    params: Mapping[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None
    per_sequence: bool = False
    chunk_size: int | None = None
    implementation: str = "engine"
    reference: ReferenceHead | None = None

    def compute(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
    ) -> objectives.ObjectiveOutput | list[objectives.ObjectiveOutput]:
        """The objective from the head's input ``hidden`` ``[B, T, H]`` and its ``weight`` / ``bias``."""
        if hidden.shape[:-1] != self.labels.shape:
            raise ValueError(
                f"fused objective: the LM head saw hidden states {tuple(hidden.shape)} but labels are "
                f"{tuple(self.labels.shape)} (logits_to_keep must stay 0)"
            )
        ref = self.reference
        if ref is not None and ref.hidden.shape[:-1] != self.labels.shape:
            raise ValueError(
                f"fused objective: the reference's hidden states {tuple(ref.hidden.shape)} do not match the "
                f"labels {tuple(self.labels.shape)} (run the reference on the same inputs)"
            )
        kw = dict(
            bias=bias, softcap=softcap, generator=self.generator, chunk_size=self.chunk_size,
            implementation=self.implementation, **self.params,
        )  # fmt: skip
        if ref is not None:
            kw.update(ref_weight=ref.weight, ref_bias=ref.bias, ref_softcap=ref.softcap)
        if not self.per_sequence:
            ref_hidden = None if ref is None else ref.hidden
            return objectives.compute_from_hidden(
                self.name, hidden, weight, self.labels, ref_hidden=ref_hidden, **kw
            )
        return [
            objectives.compute_from_hidden(
                self.name,
                hidden[i],
                weight,
                self.labels[i],
                ref_hidden=None if ref is None else ref.hidden[i],
                **kw,
            )
            for i in range(self.labels.shape[0])
        ]


@dataclass
class _Pending:
    """A request waiting on the head during one forward, and its result once served."""

    request: FusedObjective | HeadCapture
    softcap: float | None
    result: Any = None


@dataclass
class _FusedState:
    """What ``enable_fused_objective`` leaves on the causal LM (``_fused_state``)."""

    original_forward: Any
    head: nn.Linear
    softcap: float | None
    model_type: str


# ======================================================================================================
# Finding the causal LM and checking its head
# ======================================================================================================
# ======================================================================================================
# The two patched forwards
# ======================================================================================================
def _head_forward(self: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """``nn.Linear.forward``, unless a request waits: then serve it and return ``[..., 0]`` logits."""
    pending = self.__dict__.get("_fused_pending")
    if pending is None or pending.result is not None:
        return nn.functional.linear(hidden, self.weight, self.bias)
    pending.result = pending.request.compute(hidden, self.weight, self.bias, pending.softcap)
    return hidden.new_zeros(*hidden.shape[:-1], 0)


def _run_fused(
    state: _FusedState, request: FusedObjective | HeadCapture, args: tuple, kwargs: dict[str, Any]
) -> Any:
    """The original forward with ``request`` waiting on the head; the served result."""
    if not isinstance(request, FusedObjective | HeadCapture):
        raise TypeError(f"fused_objective must be a FusedObjective, got {type(request).__name__}")
    if kwargs.get("labels") is not None:
        raise ValueError("fused objective: pass the labels in FusedObjective, not as labels=")
    if kwargs.get("logits_to_keep", 0) not in (0, None):
        raise ValueError("fused objective: logits_to_keep must stay 0 (the objective needs every position)")
    head = state.head
    if "_fused_pending" in head.__dict__:
        raise RuntimeError("fused objective: nested fused forward calls are not supported")
    pending = head.__dict__["_fused_pending"] = _Pending(request, state.softcap)
    try:
        state.original_forward(*args, **kwargs)
    finally:
        del head.__dict__["_fused_pending"]
    if pending.result is None:
        raise RuntimeError(f"fused objective: the forward of {state.model_type} never called its LM head")
    return pending.result


def _fused_signature(original: Any) -> inspect.Signature:
    """``self`` + the original forward's parameters + keyword-only ``fused_objective`` (before ``**kw``):
    what ``inspect.signature`` shows (the Trainer keeps dataset columns by the forward's parameters)."""
    params = list(inspect.signature(original).parameters.values())
    extra = inspect.Parameter("fused_objective", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(at, extra)
    params.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    return inspect.Signature(params)


def _make_forward(state: _FusedState) -> Any:
    def forward(self: nn.Module, *args: Any, fused_objective: FusedObjective | None = None, **kwargs: Any):
        if fused_objective is None:
            return state.original_forward(*args, **kwargs)
        return _run_fused(state, fused_objective, args, kwargs)

    forward.__signature__ = _fused_signature(state.original_forward)
    forward.__doc__ = "The model's forward; with ``fused_objective=`` returns the objective (fused.py)."
    return forward


# ======================================================================================================
# Public API
# ======================================================================================================
def is_enabled(model: nn.Module) -> bool:
    """Whether ``enable_fused_objective`` patched the causal LM inside ``model``."""
    try:
        return "_fused_state" in causal_lm(model).__dict__
    except FusedHeadError:
        return False


def fused_head(model: nn.Module) -> nn.Linear:
    """The (patched) LM head of an enabled model, e.g. for its device."""
    return causal_lm(model).__dict__["_fused_state"].head


def enable_fused_objective(model: nn.Module, *, verify: bool = True) -> nn.Module:
    """Patch the causal LM inside ``model`` so that ``model(..., fused_objective=spec)`` returns the objective.

    Idempotent; returns ``model``. Raises ``FusedHeadError`` (one line: model type, reason, way out) for a
    head that cannot be fused exactly (module docstring). ``verify`` runs one no-grad probe forward on two
    tokens (global RNG state restored) and refuses a model whose logits are not its head's output,
    soft-capped as configured; pass ``verify=False`` only where a forward cannot run yet (e.g. parameters
    still on the meta device).
    """
    lm = causal_lm(model)
    if "_fused_state" in lm.__dict__:
        return model
    head, softcap = check_fusable(lm)
    model_type = getattr(lm.config, "model_type", type(lm).__name__)
    state = _FusedState(lm.forward, head, softcap, model_type)
    head.forward = MethodType(_head_forward, head)
    lm._fused_state = state
    lm.forward = MethodType(_make_forward(state), lm)
    if verify:
        try:
            _probe(lm, state)
        except BaseException:
            disable_fused_objective(lm)
            raise
    return model


def disable_fused_objective(model: nn.Module) -> nn.Module:
    """Undo ``enable_fused_objective`` (the instance forwards are removed); returns ``model``."""
    lm = causal_lm(model)
    state = lm.__dict__.pop("_fused_state", None)
    if state is not None:
        lm.__dict__.pop("forward", None)
        state.head.__dict__.pop("forward", None)
        if getattr(lm.forward, "__func__", None) is not getattr(state.original_forward, "__func__", None):
            lm.forward = state.original_forward  # it was an instance forward itself (e.g. another patch)
    return model


def _probe(lm: nn.Module, state: _FusedState) -> None:
    """One no-grad forward on two tokens: the logits must be exactly the head's output (soft-capped)."""
    captured: list[torch.Tensor] = []
    handle = state.head.register_forward_hook(lambda mod, inp, out: captured.append(out))
    embeddings = lm.get_input_embeddings() if callable(getattr(lm, "get_input_embeddings", None)) else None
    device = embeddings.weight.device if embeddings is not None else state.head.weight.device
    try:
        ids = torch.zeros(1, 2, dtype=torch.long, device=device)
        ids[0, 1] = 1
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            out = state.original_forward(input_ids=ids, use_cache=False)
    except Exception as e:  # noqa: BLE001 - any failure means we could not verify
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise refuse(lm, f"could not run a probe forward ({msg}; verify=False skips it)") from None
    finally:
        handle.remove()
    logits = out.logits if hasattr(out, "logits") else out[0]
    if len(captured) != 1:
        raise refuse(lm, f"calls its LM head {len(captured)} times per forward (expected once)")
    raw = captured[0]
    if raw.shape != logits.shape:
        raise refuse(lm, f"returns logits of shape {tuple(logits.shape)}, its head {tuple(raw.shape)}")
    expected = raw if state.softcap is None else torch.tanh(raw / state.softcap) * state.softcap
    eps = torch.finfo(raw.dtype).eps
    scale = float(expected.abs().max().clamp(min=1.0))
    if not torch.allclose(logits.to(raw.dtype).float(), expected.float(), rtol=8 * eps, atol=8 * eps * scale):
        cap = f"soft-capped at {state.softcap}" if state.softcap else "unchanged"
        raise refuse(lm, f"post-processes its logits (they are not its head's output, {cap})")


def reference_head(model: nn.Module, inputs: Mapping[str, Any]) -> ReferenceHead:
    """The final hidden states ``[B, T, H]`` and LM head of ``model`` on ``inputs``, from its own forward
    (every hook, ``position_ids`` of packed rows, masks: as for the policy), without computing logits.

    ``model`` may be wrapped (PEFT, ...); it is enabled on first use. The forward runs as the caller set
    it up: a frozen reference wants ``torch.no_grad()`` and ``eval()`` around this call.
    """
    enable_fused_objective(model)
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels", "num_items_in_batch")}
    kwargs.setdefault("use_cache", False)
    return model(**kwargs, fused_objective=HeadCapture())


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """HF-style labels ``[B, T]`` (``labels[t]`` = token t) -> aligned targets: ``out[:, t] = labels[:, t+1]``,
    the last position ignored (-100). Packed rows need a -100 at each example's first token (transformers'
    ``DataCollatorWithFlattening`` puts one there), so no target crosses an example boundary."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[..., :-1] = labels[..., 1:]
    return out


def fused_loss(
    model: nn.Module,
    batch: Mapping[str, Any],
    name: str,
    generator: torch.Generator | None = None,
    *,
    chunk_size: int | None = None,
    reference_model: nn.Module | None = None,
    **params: Any,
) -> objectives.ObjectiveOutput:
    """Objective ``name`` on ``batch`` through ``model``'s fused LM head, for one's own training loop.

    ``batch``: ``input_ids`` ``[B, T]`` (+ ``attention_mask`` and/or ``position_ids`` for packing, or any
    other forward argument) and ``labels`` ``[B, T]`` as HF models take them (not shifted; -100 =
    ignored), or ``shift_labels`` already aligned. ``model`` may be wrapped (DDP, PEFT, ...); it is
    enabled on first use. Returns the ``ObjectiveOutput``: ``loss`` is the SUM over the response tokens,
    ``num_tokens`` their count, so ``(out.loss / out.num_tokens).backward()`` is the per-token mean.
    Equal (loss, metrics, gradients, draws for the same ``generator`` state) to
    ``objectives.compute(name, logits, shift_labels(labels), ...)`` on the model's logits.
    ``reference_model``: the frozen reference of a reference objective (``asft``); its forward runs on the
    same batch under ``torch.no_grad()`` (put it in ``eval()`` yourself), equal to ``ref_logits=`` its
    logits.
    """
    inputs = dict(batch)
    labels, aligned = inputs.pop("labels", None), inputs.pop("shift_labels", None)
    inputs.pop("num_items_in_batch", None)
    if aligned is None:
        if labels is None:
            raise ValueError("fused_loss: the batch needs labels (or shift_labels)")
        aligned = shift_labels(labels)
    inputs.setdefault("use_cache", False)
    enable_fused_objective(model)
    reference = None
    if reference_model is not None:
        with torch.no_grad():
            reference = reference_head(reference_model, inputs)
    spec = FusedObjective(name, aligned, params, generator, chunk_size=chunk_size, reference=reference)
    return model(**inputs, fused_objective=spec)


__all__ = [
    "FusedHeadError",
    "FusedObjective",
    "HeadCapture",
    "ReferenceHead",
    "causal_lm",
    "check_fusable",
    "disable_fused_objective",
    "enable_fused_objective",
    "fused_head",
    "fused_loss",
    "is_enabled",
    "reference_head",
    "shift_labels",
]
